"""The ``ssh`` command line that reaches a sandbox: user key, known hosts, ProxyCommand."""

from __future__ import annotations

import logging
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from openshell_core.errors import OpenShellError
from openshell_core.host.metadata import gateway_dir
from openshell_core.wire.osrs1.frames import DEFAULT_LIVENESS
from openshell_core.wire.osrs1.lines import (
    RESUME_TIMEOUT,
)

log = logging.getLogger("openshell.sshproxy")


#: ssh's own keepalive: a probe after this many seconds of silence from the server.
SERVER_ALIVE_INTERVAL: Final = 10


def ensure_user_key(key: Path, *, comment: str) -> Path:
    """An ed25519 key pair at ``key`` (and ``key.pub``), made once with ``ssh-keygen``.

    :raises OpenShellError: when ``ssh-keygen`` is missing or fails.
    """
    if key.exists() and key.with_suffix(".pub").exists():
        return key
    key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    command = ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise OpenShellError("ssh-keygen is not installed", hint="install openssh-client") from None
    if result.returncode != 0:
        raise OpenShellError(
            f"ssh-keygen failed: {result.stderr.strip()}", hint="install openssh-client"
        )
    log.info("made SSH key %s", key)
    return key


def server_alive_count(resume_timeout: float) -> int:
    """Unanswered keepalives after which ssh gives up: 3 (30 s) for a plain session; for a
    resumable one enough to outlast the proxy's own wait (plus noticing the break and
    reconnecting)."""
    slack = DEFAULT_LIVENESS.dead_after + 25
    return max(3, math.ceil((resume_timeout + slack) / SERVER_ALIVE_INTERVAL))


def host_alias(sandbox_id: str) -> str:
    """The name ssh knows a sandbox by (its known_hosts entry and HostKeyAlias)."""
    return f"openshell-{sandbox_id}"


def known_hosts_line(sandbox_id: str, host_public_key: str) -> str:
    """``alias type base64`` for a sandbox's host key (comment dropped)."""
    parts = host_public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an SSH public key line: {host_public_key!r}")
    return f"{host_alias(sandbox_id)} {parts[0]} {parts[1]}"


def proxy_argv(
    gateway: str,
    sandbox_id: str,
    token: str,
    *,
    resume: bool = True,
    resume_timeout: float = RESUME_TIMEOUT,
) -> list[str]:
    """How ssh runs ``ssh-proxy``: the console script next to this Python, else ``-c``.

    The resume options are only spelled out when they differ from the defaults.
    """
    script = Path(sys.executable).parent / "pytest-openshell"
    if script.is_file() and os.access(script, os.X_OK):
        head = [str(script)]
    else:
        head = [sys.executable, "-c", "import sys; from openshell_core.cli import main; "
                "sys.exit(main(sys.argv[1:]))"]  # fmt: skip
    options = []
    if not resume:
        options.append("--no-resume")
    elif resume_timeout != RESUME_TIMEOUT:
        options.append(f"--resume-timeout={resume_timeout:g}")
    # `--flag=value`: a token may begin with "-", which argparse would take for an option.
    return [
        *head,
        "ssh-proxy",
        *options,
        f"--gateway={gateway}",
        f"--sandbox-id={sandbox_id}",
        f"--token={token}",
    ]


def ssh_command(  # noqa: PLR0917 (positional, as `sandbox connect` calls it)
    gateway: str,
    sandbox_id: str,
    token: str,
    host_public_key: str,
    identity_file: Path | str,
    remote_argv: Sequence[str] = (),
    *,
    known_hosts_file: Path | str | None = None,
    user: str = "root",
    resume: bool = True,
    resume_timeout: float = RESUME_TIMEOUT,
) -> list[str]:
    """The ``ssh`` command line that reaches a sandbox through its gateway.

    With ``resume`` the proxy keeps the session across tunnel breaks for up to ``resume_timeout``
    seconds, so ssh's own keepalive is made to wait longer than that (and no longer: a hung
    proxy still ends the session).

    The sandbox's host key is written (alone) into ``known_hosts_file`` (default: next to the
    gateway's other host-side files, one file per sandbox) and checked strictly under a host alias,
    so a sandbox presenting another key is refused. ``remote_argv`` goes to ssh as it is: ssh joins
    it with spaces and the remote shell parses it, as with any ssh command.
    """
    if known_hosts_file is None:
        known_hosts_file = gateway_dir(gateway) / "ssh" / "known_hosts.d" / sandbox_id
    known_hosts = Path(known_hosts_file)
    known_hosts.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    known_hosts.write_text(known_hosts_line(sandbox_id, host_public_key) + "\n")
    # ssh expands %-tokens in ProxyCommand; a literal % must be doubled.
    argv = proxy_argv(gateway, sandbox_id, token, resume=resume, resume_timeout=resume_timeout)
    proxy = shlex.join(argv).replace("%", "%%")
    return [
        "ssh",
        "-i",
        str(identity_file),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        f"HostKeyAlias={host_alias(sandbox_id)}",
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "CheckHostIP=no",
        "-o",
        "UpdateHostKeys=no",
        "-o",
        "PasswordAuthentication=no",
        "-o",
        "BatchMode=yes",
        # A gateway that dies under a session must end it, not hang it.
        "-o",
        f"ServerAliveInterval={SERVER_ALIVE_INTERVAL}",
        "-o",
        f"ServerAliveCountMax={server_alive_count(resume_timeout if resume else 0)}",
        "-o",
        "LogLevel=ERROR",
        "--",
        f"{user}@{host_alias(sandbox_id)}",
        *remote_argv,
    ]
