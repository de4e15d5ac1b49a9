"""Sandbox tokens (pure logic): signed by the gateway's key, bound to one sandbox, expiring or not."""

from __future__ import annotations

import pytest

from openshell_core.server.sandbox_tokens import (
    TokenProblem,
    TokenRefused,
    TokenSigner,
    bearer,
    token_of,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def _refused(signer: TokenSigner, token: str, **kwargs: object) -> TokenProblem:
    with pytest.raises(TokenRefused) as caught:
        signer.verify(token, **kwargs)  # type: ignore[arg-type]
    return caught.value.problem


def test_a_token_verifies_for_its_own_sandbox() -> None:
    signer = TokenSigner(KEY)
    issued = signer.issue("sandbox-a")
    assert signer.verify(issued.token, sandbox_id="sandbox-a").sandbox_id == "sandbox-a"


def test_a_token_without_a_lifetime_never_expires() -> None:
    signer = TokenSigner(KEY, ttl=0)
    issued = signer.issue("sandbox-a", now=1000)
    assert issued.expires_at == 0
    assert signer.verify(issued.token, now=10**10).sandbox_id == "sandbox-a"


def test_a_token_expires_after_its_lifetime() -> None:
    signer = TokenSigner(KEY, ttl=60)
    issued = signer.issue("sandbox-a", now=1000)
    assert issued.expires_at == 1060
    assert signer.verify(issued.token, now=1059).sandbox_id == "sandbox-a"
    assert _refused(signer, issued.token, now=1060) is TokenProblem.EXPIRED


def test_a_token_of_another_sandbox_is_refused() -> None:
    signer = TokenSigner(KEY)
    token = signer.issue("sandbox-a").token
    assert _refused(signer, token, sandbox_id="sandbox-b") is TokenProblem.OTHER_SANDBOX


def test_a_token_signed_with_another_key_is_refused() -> None:
    token = TokenSigner(OTHER_KEY).issue("sandbox-a").token
    assert _refused(TokenSigner(KEY), token) is TokenProblem.BAD_SIGNATURE


def test_a_token_whose_claims_were_changed_is_refused() -> None:
    signer = TokenSigner(KEY)
    header, _, signature = signer.issue("sandbox-a").token.split(".")
    _, claims, _ = signer.issue("sandbox-b").token.split(".")
    assert _refused(signer, f"{header}.{claims}.{signature}") is TokenProblem.BAD_SIGNATURE


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "...."])
def test_missing_and_malformed_tokens_are_refused(token: str) -> None:
    problem = _refused(TokenSigner(KEY), token)
    assert problem in (TokenProblem.MISSING, TokenProblem.MALFORMED, TokenProblem.BAD_SIGNATURE)
    assert (problem is TokenProblem.MISSING) == (token == "")


def test_the_refusal_never_carries_the_token() -> None:
    token = TokenSigner(OTHER_KEY).issue("sandbox-a").token
    with pytest.raises(TokenRefused) as caught:
        TokenSigner(KEY).verify(token)
    assert token not in str(caught.value)


def test_the_bearer_token_is_read_from_the_metadata() -> None:
    assert token_of([("x", "y"), ("authorization", bearer("t0k"))]) == "t0k"
    assert token_of([("authorization", "Basic abc")]) == ""
    assert token_of(None) == ""
