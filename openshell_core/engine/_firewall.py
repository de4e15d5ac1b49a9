"""One iptables rule that lets containers of a private engine reach each other.

A private engine runs with ``--iptables=false`` so that it never rewrites the machine's firewall or
fights the host's own Docker over its chains. But bridged traffic still crosses the ``FORWARD``
chain when ``br_netfilter`` is active, and a daemon that ran earlier with iptables on leaves that
chain's policy at ``DROP``. So we insert exactly one ``ACCEPT`` rule for traffic inside the engine's
address pool, tagged with a comment naming the engine, and remove it when the engine stops.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

BRIDGE_NF = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def bridged_traffic_filtered() -> bool:
    """True when bridged packets traverse iptables (and so the FORWARD policy applies to them)."""
    try:
        return BRIDGE_NF.read_text().strip() == "1"
    except OSError:
        return False


def iptables() -> str | None:
    return shutil.which("iptables")


def _rule(pool: str, tag: str) -> list[str]:
    return ["FORWARD", "-s", pool, "-d", pool, "-m", "comment", "--comment", tag, "-j", "ACCEPT"]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    binary = iptables()
    assert binary is not None
    return subprocess.run(
        [binary, "-w", "5", *args], capture_output=True, text=True, check=False, timeout=30
    )


def ensure_accept(pool: str, tag: str) -> bool:
    """Make sure the ACCEPT rule exists; False when iptables is absent (and not needed)."""
    if iptables() is None:
        return False
    if _run(["-C", *_rule(pool, tag)]).returncode != 0:
        inserted = _run(["-I", *_rule(pool, tag)[:1], "1", *_rule(pool, tag)[1:]])
        if inserted.returncode != 0:
            raise OSError(
                f"iptables refused the FORWARD rule for {pool}: {inserted.stderr.strip()}"
            )
    return True


def remove_accept(pool: str, tag: str) -> None:
    """Remove every copy of the rule (an interrupted start may have added it twice)."""
    if iptables() is None:
        return
    for _ in range(16):
        if _run(["-D", *_rule(pool, tag)]).returncode != 0:
            return


def forward_policy() -> str | None:
    """The FORWARD chain's policy (``ACCEPT``/``DROP``), or None when it cannot be read."""
    if iptables() is None:
        return None
    listing = _run(["-S", "FORWARD"])
    for line in listing.stdout.splitlines():
        if line.startswith("-P FORWARD "):
            return line.split()[2]
    return None


def set_forward_policy(policy: str) -> None:
    """Set the FORWARD policy (tests reproduce a machine an earlier daemon left at DROP)."""
    result = _run(["-P", "FORWARD", policy])
    if result.returncode != 0:
        raise OSError(f"iptables -P FORWARD {policy} failed: {result.stderr.strip()}")
