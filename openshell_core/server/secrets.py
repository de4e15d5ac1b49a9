"""Start-time reconciliation of the gateway's secrets: the SSH handshake secret, the key that
signs sandbox tokens, and the PKI.

All live in the gateway's state directory and are reconciled only after the store opened (a
gateway that cannot read its store changes nothing). The handshake secret and the token key are
reused when present and generated only when absent; they are never logged. The PKI is reused
when present and valid, and regenerated only when absent or invalid. Two fault switches break
these rules on purpose: ``regenerate-handshake-secret`` (a new secret at every start) and
``rotate-pki-on-resume`` (new certificates at every start)."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from openshell_core import pki
from openshell_core.errors import StateError
from openshell_core.wire import nssh1 as handshake

log = logging.getLogger("openshell.server.secrets")


def reconcile_handshake_secret(path: Path, *, regenerate: bool = False) -> tuple[str, bool]:
    """The gateway's handshake secret: the one in ``path`` when present, else a new one.

    :returns: ``(secret, generated)``.
    :raises StateError: when the file holds something that is not a handshake secret (it is
        left as it is: replacing it would lock every existing sandbox out).
    """
    if path.exists() and not regenerate:
        secret = path.read_text().strip()
        if not handshake.is_valid_secret(secret):
            raise StateError(
                f"the SSH handshake secret in {path} is malformed (expected 64 lowercase hex "
                "characters); refusing to start, nothing was changed",
                hint="restore the file; a new secret would make every existing sandbox reject "
                "its tunnels",
            )
        log.info("reusing existing SSH handshake secret")
        return secret, False
    secret = handshake.generate_secret()
    _write_private(path, secret + "\n")
    log.info("generated SSH handshake secret")
    return secret, True


def reconcile_token_key(path: Path, *, regenerate: bool = False) -> tuple[bytes, bool]:
    """The key that signs sandbox tokens: the one in ``path`` when present, else a new one.

    Like the handshake secret it is made once and kept: a new key makes every supervisor's token
    worthless (``regenerate`` is the fault switch that does exactly that).

    :returns: ``(key, generated)``.
    :raises StateError: when the file holds something that is not a key (left as it is).
    """
    if path.exists() and not regenerate:
        text = path.read_text().strip()
        if not handshake.is_valid_secret(text):
            raise StateError(
                f"the sandbox-token key in {path} is malformed (expected 64 lowercase hex "
                "characters); refusing to start, nothing was changed",
                hint="restore the file; a new key would make every sandbox's token worthless",
            )
        log.info("reusing existing sandbox-token signing key")
        return bytes.fromhex(text), False
    text = handshake.generate_secret()
    _write_private(path, text + "\n")
    log.info("generated sandbox-token signing key")
    return bytes.fromhex(text), True


def reconcile_gateway_pki(
    directory: Path, extra_sans: tuple[str, ...], *, rotate: bool = False
) -> tuple[pki.PkiBundle, bool]:
    """The gateway's CA, server and client certificates: reused when present and valid.

    :returns: ``(bundle, rotated)``.
    """
    if rotate:
        bundle = pki.generate_pki(list(extra_sans))
        pki.write_pki(directory, bundle)
        log.info("generated new TLS certificates")
        return bundle, True
    return pki.reconcile_pki(directory, list(extra_sans))  # which logs what it chose


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_name(path.name + ".partial")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)
