"""Property 17: the key that signs sandbox tokens is unchanged, and a token issued before the
scenario still verifies after it.

A gateway that makes a new signing key when it starts (upstream's gateway JWT key rotation)
makes every supervisor's token worthless: in the ``supervisor`` transport its sandboxes never
come back, as a new handshake secret locked them out in the seeds' transport. The key itself is
never read: its digest is compared (``state-digests``), and the token a running sandbox's
supervisor was given when it was created is presented to the gateway's ``IssueSandboxToken``,
which must accept it (a token this gateway signed, for a sandbox it has; expired or not).
"""

from __future__ import annotations

import base64
import json

import pytest

from openshell_core.errors import NotFoundError
from openshell_core.host.api_client import GatewayRpcError
from pytest_openshell import Ability, GiveUp
from pytest_openshell.drivers import TOKEN_KEY_DIGEST

from ._support import SETTLED, SURVIVING, Outcome, eventually

pytestmark = [pytest.mark.openshell_property(number=17), pytest.mark.openshell_traits(SURVIVING)]


@pytest.mark.openshell_abilities(Ability.STATE_DIGESTS)
def test_the_token_signing_key_is_unchanged(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    if lifecycle.workload.record.expected("token key digest") is None:
        pytest.skip(
            f"the driver's state digests name no sandbox-token signing key ({TOKEN_KEY_DIGEST!r})"
        )
    lifecycle.verify("token key digest", within=SETTLED)


def test_a_sandbox_token_issued_before_the_scenario_still_verifies(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    workload = lifecycle.workload
    owner = workload.old_token_sandbox
    if owner is None:
        pytest.skip(
            "the gateway gave its supervisors no sandbox token (the nssh1 transport: it dials "
            "each supervisor and signs every connection with its handshake secret)"
        )

    def exchanged() -> str:
        with workload.client() as client:
            try:
                return client.exchange_sandbox_token(workload.old_token)
            except (GatewayRpcError, NotFoundError) as exc:
                if isinstance(exc, NotFoundError) or exc.code == "UNAUTHENTICATED":
                    # The gateway answers with its key loaded: a refusal is its last word.
                    raise GiveUp(
                        f"the gateway refused the token {owner.name}'s supervisor was given "
                        f"before the scenario: {exc}"
                    ) from exc
                raise

    new: str = eventually(exchanged, timeout=SETTLED, what="the old sandbox token exchanged")
    assert _subject(new) == owner.id, (
        f"the token issued for the old one of {owner.name} is for {_subject(new)!r}"
    )


def _subject(token: str) -> str:
    """The ``sub`` claim of a token, read without verifying it (the gateway did)."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims.get("sub", ""))
