"""What the gateway knows about a sandbox and an SSH session, independent of storage and wire."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from openshell_core.wire import contract


class Phase(enum.StrEnum):
    """A sandbox's observed phase (names as in the API's ``SandboxPhase``)."""

    PROVISIONING = "PROVISIONING"
    READY = "READY"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    DELETING = "DELETING"


class Desired(enum.StrEnum):
    """What the user asked for last."""

    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


@dataclass(frozen=True)
class SandboxRecord:
    """One sandbox as the gateway remembers it.

    ``environment`` is what the creating request asked for; ``sandbox_env`` is the complete
    environment frozen into the sandbox's runtime at creation (handshake secret and host key
    included), reused unchanged whenever the runtime has to be made again.
    ``workspace_created`` records that the sandbox's workspace was made, so that a workspace
    found missing later is a loss, not a sandbox still to be provisioned.
    """

    id: str
    name: str
    workspace: str
    image: str
    environment: Mapping[str, str]
    labels: Mapping[str, str]
    sandbox_env: Mapping[str, str]
    host_key_public: str
    host_key_fingerprint: str
    desired: Desired = Desired.RUNNING
    phase: Phase = Phase.PROVISIONING
    reason: str = ""
    workspace_created: bool = False
    restart_count: int = 0
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)

    @property
    def command(self) -> tuple[str, ...]:
        """The sandbox's own command (``spec.command`` at creation; empty: none).

        Kept in :attr:`sandbox_env` (:data:`~openshell_core.wire.contract.SANDBOX_COMMAND_ENV`),
        frozen with the rest, so the supervisor runs it at every start of its runtime.
        """
        return decode_command(self.sandbox_env.get(contract.SANDBOX_COMMAND_ENV, ""))


def encode_command(command: Sequence[str]) -> str:
    return json.dumps(list(command))


def decode_command(text: str) -> tuple[str, ...]:
    """:func:`encode_command`'s text back as argv; empty text is no command."""
    if not text:
        return ()
    argv = json.loads(text)
    if not isinstance(argv, list) or not all(isinstance(arg, str) for arg in argv):
        raise ValueError(f"{contract.SANDBOX_COMMAND_ENV} is not a JSON list of strings")
    return tuple(argv)


@dataclass(frozen=True)
class SshSessionRecord:
    """A token that lets its holder open SSH tunnels into one sandbox."""

    token: str
    sandbox_id: str
    created_at: float
    expires_at: float
    revoked: bool = False

    def usable(self, now: float | None = None) -> bool:
        """True when the token is neither revoked nor expired (``expires_at <= 0``: never)."""
        now = time.time() if now is None else now
        return not self.revoked and (self.expires_at <= 0 or now < self.expires_at)
