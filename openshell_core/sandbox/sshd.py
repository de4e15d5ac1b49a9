"""OpenSSH inside the sandbox: our own ``sshd_config``, the host key and authorized keys it uses.

The supervisor never lets ``sshd`` listen: each SSH connection gets a fresh ``sshd -i`` whose
stdin/stdout are pipes to the supervisor. Keeping the supervisor in the middle is what lets a
resumable stream (OSRS1) re-attach a live ``sshd`` to a new connection.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from openshell_core.wire import contract

log = logging.getLogger("openshell.sandbox.sshd")

SSHD: Final = "/usr/sbin/sshd"
#: Variables that are copied into SSH sessions (sshd builds a fresh environment for them).
SESSION_ENV: Final = (contract.SANDBOX_ID_ENV, contract.SANDBOX_NAME_ENV)
_SAFE_VALUE = re.compile(r"[A-Za-z0-9._:/@+-]*")


@dataclass(frozen=True)
class SshdFiles:
    """Where the files live; ``root`` is ``/`` in the image (tests may point it elsewhere)."""

    root: Path = Path("/")

    @property
    def host_key(self) -> Path:
        return self.root / "etc/ssh/ssh_host_ed25519_key"

    @property
    def directory(self) -> Path:
        return self.root / "etc/openshell/ssh"

    @property
    def authorized_keys(self) -> Path:
        return self.directory / "authorized_keys"

    @property
    def config(self) -> Path:
        return self.directory / "sshd_config"

    @property
    def privsep_dir(self) -> Path:
        return self.root / "run/sshd"


def sshd_config(files: SshdFiles, env: Mapping[str, str]) -> str:
    """Our ``sshd_config``: keys only, root by key only, no PAM, the one host key."""
    lines = [
        "# Written by the OpenShell sandbox supervisor at every start; edits are lost.",
        f"HostKey {files.host_key}",
        f"AuthorizedKeysFile {files.authorized_keys}",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitEmptyPasswords no",
        "HostbasedAuthentication no",
        "UsePAM no",
        "PermitRootLogin prohibit-password",
        "StrictModes yes",
        "UseDNS no",
        "PrintMotd no",
        "X11Forwarding no",
        "PidFile none",
        "LogLevel INFO",
        "AcceptEnv LANG LC_*",
        # scp talks SFTP since OpenSSH 9.0, so SFTP is what makes file copies work.
        "Subsystem sftp internal-sftp",
    ]
    pairs = [
        f"{name}={env[name]}"
        for name in SESSION_ENV
        if env.get(name) and _SAFE_VALUE.fullmatch(env[name])
    ]
    if pairs:
        lines.append("SetEnv " + " ".join(pairs))
    return "\n".join(lines) + "\n"


def _write(path: Path, text: str, mode: int) -> None:
    """Write atomically with ``mode`` from the start (a key is never readable by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def prepare(
    files: SshdFiles,
    *,
    host_key: str,
    authorized_keys: str,
    session_env: Mapping[str, str],
) -> None:
    """Write the host key (0600), authorized keys and our config.

    Without a ``host_key`` one is made here: that works, but it changes whenever the container
    is recreated, so the gateway always passes one (``OPENSHELL_SSH_HOST_KEY``).
    """
    files.directory.mkdir(parents=True, exist_ok=True)
    files.directory.chmod(0o755)
    files.privsep_dir.mkdir(parents=True, exist_ok=True)
    if host_key.strip():
        _write(files.host_key, host_key.strip() + "\n", 0o600)
    else:
        log.warning(
            "%s is not set: using a host key made for this start", contract.SSH_HOST_KEY_ENV
        )
        files.host_key.unlink(missing_ok=True)
        files.host_key.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(files.host_key)],
            check=True,
            capture_output=True,
        )
    keys = [line.strip() for line in authorized_keys.splitlines() if line.strip()]
    if not keys:
        log.warning("%s is empty: nobody can log in over SSH", contract.AUTHORIZED_KEYS_ENV)
    _write(files.authorized_keys, "".join(f"{key}\n" for key in keys), 0o644)
    _write(files.config, sshd_config(files, session_env), 0o644)


def sshd_argv(files: SshdFiles) -> list[str]:
    """One SSH connection on stdin/stdout, logging to stderr (the container's log)."""
    return [SSHD, "-i", "-e", "-f", str(files.config)]


def check_config(files: SshdFiles) -> str:
    """``sshd -t`` on our config: '' when sshd accepts it, else what it said."""
    result = subprocess.run(
        [SSHD, "-t", "-f", str(files.config)], capture_output=True, text=True, check=False
    )
    return "" if result.returncode == 0 else (result.stderr or result.stdout).strip()
