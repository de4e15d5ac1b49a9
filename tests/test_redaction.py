"""Redaction of secrets in captured text and values (pure logic)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from openshell_core.redaction import MASK, SECRET_ENV_NAMES, Redactor

KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBqVQ0Ey3cHCbvu7NmWnGwEPCwTqCH2Z1S0Ff2RGbWMSAAAAJg0m3U1NJt1\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)
BODY = ("b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", "QyNTUxOQAAACBqVQ0Ey3cHCbvu7NmWnGwEPCwTqCH2")
SECRET = "3f" * 32


def test_a_private_key_block_is_masked_whole() -> None:
    text = Redactor().text(f"before\n{KEY}after")
    assert text == f"before\n{MASK}\nafter"


def test_a_private_key_is_masked_in_json_and_in_a_python_repr() -> None:
    redactor = Redactor()
    for quoted in (json.dumps({"key": KEY, "other": 1}), repr(KEY)):
        masked = redactor.text(quoted)
        assert not any(line in masked for line in BODY), masked
        assert MASK in masked


def test_a_private_key_cut_short_loses_what_is_left_of_its_body() -> None:
    masked = Redactor().text("E   assert '" + KEY[:90].replace("\n", "\\n") + "...' == ''")
    assert not any(line[:20] in masked for line in BODY), masked
    assert masked.endswith("...' == ''")


def test_the_value_of_each_secret_variable_is_masked_in_each_notation() -> None:
    redactor = Redactor()
    for name in SECRET_ENV_NAMES:
        for written in (f"{name}={SECRET}", f'"{name}": "{SECRET}"', f"'{name}': '{SECRET}'"):
            assert SECRET not in redactor.text(written), written


def test_a_session_token_is_masked_in_an_option_and_in_a_header() -> None:
    redactor = Redactor()
    proxy = "ProxyCommand=pytest-openshell ssh-proxy --token=kZ-ZdAlYrK90d8nu --gateway=g"
    assert redactor.text(proxy) == (
        f"ProxyCommand=pytest-openshell ssh-proxy --token={MASK} --gateway=g"
    )
    assert redactor.text("x-sandbox-token: kZ-ZdAlYrK90d8nu\r\n") == f"x-sandbox-token: {MASK}\r\n"


def test_other_variables_are_left_alone() -> None:
    text = "OPENSHELL_SANDBOX_ID=abc OPENSHELL_SSH_HANDSHAKE_SKEW_SECS=300 token=visible"
    assert Redactor().text(text) == text


def test_a_learned_value_is_masked_wherever_it_appears() -> None:
    redactor = Redactor()
    redactor.learn(SECRET)
    assert redactor.text(f"the secret is {SECRET}.") == f"the secret is {MASK}."


def test_a_learned_key_is_masked_line_by_line_without_its_begin_line() -> None:
    redactor = Redactor()
    redactor.learn(KEY)
    tail = "".join(KEY.splitlines(keepends=True)[2:])  # a log tail that starts mid-key
    assert not any(line in redactor.text(tail) for line in BODY)


def test_the_values_of_secret_variables_are_learned_from_an_inspect_document() -> None:
    redactor = Redactor()
    redactor.learn_container(
        {"Config": {"Env": [f"OPENSHELL_SSH_HANDSHAKE_SECRET={SECRET}", "PATH=/usr/bin"]}}
    )
    assert redactor.known == {SECRET}


def test_short_values_are_not_learned() -> None:
    redactor = Redactor()
    redactor.learn("abc")
    assert redactor.known == frozenset()


def test_a_value_keeps_its_shape_and_a_secret_key_is_masked_whole() -> None:
    document = {
        "Env": [f"OPENSHELL_SSH_HOST_KEY={KEY}", "A=b"],
        "OPENSHELL_SSH_HANDSHAKE_SECRET": ["not", "a", "string"],
        "n": 3,
    }
    assert Redactor().value(document) == {
        "Env": [f"OPENSHELL_SSH_HOST_KEY={MASK}\n", "A=b"],
        "OPENSHELL_SSH_HANDSHAKE_SECRET": MASK,
        "n": 3,
    }


@dataclass(eq=False)
class _Location:
    message: str


@dataclass(eq=False)
class _Entry:
    lines: list[str]
    location: _Location
    sections: list[tuple[str, str]] = field(default_factory=list)


def test_in_place_redacts_nested_dataclasses_as_a_pytest_traceback_holds_them() -> None:
    entry = _Entry([f"E   secret = {SECRET!r}"], _Location(f"--token={SECRET}"), [("log", KEY)])
    redactor = Redactor()
    redactor.learn(SECRET)
    assert redactor.in_place(entry) is entry
    assert entry.lines == [f"E   secret = '{MASK}'"]
    assert entry.location.message == f"--token={MASK}"
    assert entry.sections == [("log", f"{MASK}\n")]
