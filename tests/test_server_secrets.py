"""Start-time reconciliation of the handshake secret and the PKI on the gateway's volume."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from openshell_core import pki
from openshell_core.errors import StateError
from openshell_core.server.sandbox_tokens import TokenRefused, TokenSigner
from openshell_core.server.secrets import (
    reconcile_gateway_pki,
    reconcile_handshake_secret,
    reconcile_token_key,
)
from openshell_core.wire import nssh1 as handshake


def test_a_missing_secret_is_generated_with_owner_only_permissions(tmp_path: Path):
    path = tmp_path / "secrets" / "ssh-handshake"

    secret, generated = reconcile_handshake_secret(path)

    assert generated
    assert handshake.is_valid_secret(secret)
    assert path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_present_secret_is_reused_unchanged(tmp_path: Path):
    path = tmp_path / "ssh-handshake"
    first, _ = reconcile_handshake_secret(path)

    again, generated = reconcile_handshake_secret(path)

    assert (again, generated) == (first, False)


def test_a_malformed_secret_stops_the_start_and_is_left_alone(tmp_path: Path):
    path = tmp_path / "ssh-handshake"
    path.write_text("not-a-secret\n")

    with pytest.raises(StateError, match="malformed"):
        reconcile_handshake_secret(path)

    assert path.read_text() == "not-a-secret\n"


def test_fault_regenerate_handshake_secret_replaces_it_at_every_start(tmp_path: Path):
    path = tmp_path / "ssh-handshake"
    first, _ = reconcile_handshake_secret(path)

    again, generated = reconcile_handshake_secret(path, regenerate=True)

    assert generated
    assert again != first


def test_a_valid_pki_is_reused(tmp_path: Path):
    first, rotated = reconcile_gateway_pki(tmp_path, ("openshell-cluster-x",))
    assert rotated

    again, rotated = reconcile_gateway_pki(tmp_path, ("openshell-cluster-x",))

    assert not rotated
    assert pki.fingerprint(again.ca_cert) == pki.fingerprint(first.ca_cert)


def test_fault_rotate_pki_on_resume_makes_new_certificates_at_every_start(tmp_path: Path):
    first, _ = reconcile_gateway_pki(tmp_path, ())

    again, rotated = reconcile_gateway_pki(tmp_path, (), rotate=True)

    assert rotated
    assert pki.fingerprint(again.ca_cert) != pki.fingerprint(first.ca_cert)
    assert (tmp_path / "ca.crt").read_text() == again.ca_cert


def test_a_missing_token_key_is_generated_with_owner_only_permissions(tmp_path: Path):
    path = tmp_path / "secrets" / "sandbox-token-key"

    key, generated = reconcile_token_key(path)

    assert generated
    assert len(key) == 32
    assert path.read_text() == key.hex() + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_present_token_key_is_reused_and_old_tokens_still_verify(tmp_path: Path):
    path = tmp_path / "sandbox-token-key"
    first, _ = reconcile_token_key(path)
    token = TokenSigner(first).issue("sandbox-a").token

    again, generated = reconcile_token_key(path)

    assert (again, generated) == (first, False)
    assert TokenSigner(again).verify(token).sandbox_id == "sandbox-a"


def test_a_malformed_token_key_stops_the_start_and_is_left_alone(tmp_path: Path):
    path = tmp_path / "sandbox-token-key"
    path.write_text("short\n")

    with pytest.raises(StateError, match=r"sandbox-token key .* is malformed"):
        reconcile_token_key(path)

    assert path.read_text() == "short\n"


def test_fault_regenerate_token_key_replaces_it_and_old_tokens_stop_verifying(tmp_path: Path):
    path = tmp_path / "sandbox-token-key"
    first, _ = reconcile_token_key(path)
    token = TokenSigner(first).issue("sandbox-a").token

    again, generated = reconcile_token_key(path, regenerate=True)

    assert generated and again != first
    with pytest.raises(TokenRefused):
        TokenSigner(again).verify(token)
