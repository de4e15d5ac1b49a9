"""The error hierarchy of openshell_core.

Every error a user can see derives from :class:`OpenShellError`. Each family keeps the evidence
behind it as attributes and carries a ``hint``: the next thing the user should do. Docker errors are
translated into these at one place, :mod:`openshell_core.engine.docker_api`.
"""

from __future__ import annotations


class OpenShellError(Exception):
    """Root of every error raised by openshell_core; catch this to catch them all."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class UsageError(OpenShellError):
    """The caller asked for something invalid (a bad name, port, option)."""


class EngineError(OpenShellError):
    """The Docker engine failed, or refused an operation."""


class NoEngineError(EngineError):
    """No Docker engine can be reached."""


class EnginePrerequisiteError(EngineError):
    """A private engine cannot start on this machine; ``missing`` lists what is lacking."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = list(missing)
        super().__init__(
            "cannot start a private Docker engine: " + "; ".join(self.missing),
        )


class PermissionDeniedError(OpenShellError):
    """This user may not use what another user made (a private engine runs as root; host-side
    gateway files belong to whoever started the gateway)."""


class EnginePermissionError(NoEngineError, PermissionDeniedError):
    """The engine belongs to another user: no engine this user may use."""


class EngineCapabilityError(EngineError):
    """The operation needs an engine we own (restart, crash) and this one is not ours."""


class ClusterError(OpenShellError):
    """A Kubernetes cluster cannot be reached, or refuses what a gateway or its compute driver
    needs. The message is one line that names the fix (checked before anything is created)."""


class NotFoundError(OpenShellError):
    """A Docker object that was expected does not exist."""

    def __init__(self, kind: str, name: str, *, hint: str | None = None) -> None:
        self.kind = kind
        self.name = name
        super().__init__(f"{kind} {name!r} not found", hint=hint)


class ImageNotFoundError(NotFoundError):
    """An image is not present on the engine; we never pull, so this is final."""

    def __init__(self, ref: str, *, hint: str | None = None) -> None:
        super().__init__(
            "image",
            ref,
            hint=hint or "build it with `pytest-openshell images build`; nothing is ever pulled",
        )
        self.message = f"image {ref!r} not found locally (pytest-openshell never pulls images)"


class StateError(OpenShellError):
    """Docker or host-side state is inconsistent in a way that needs a person to decide."""


class BuildError(OpenShellError):
    """An offline image build failed."""


class ReadinessTimeout(OpenShellError):
    """Something did not become ready in time, or died while we waited for it.

    ``waited_for`` names the thing, ``elapsed`` the seconds spent, ``last_logs`` the tail of
    its log.
    """

    def __init__(
        self,
        waited_for: str,
        reason: str,
        *,
        elapsed: float,
        last_logs: list[str] | None = None,
        hint: str | None = None,
    ) -> None:
        self.waited_for = waited_for
        self.reason = reason
        self.elapsed = elapsed
        self.last_logs = list(last_logs or [])
        message = f"{waited_for}: {reason} (after {elapsed:.1f} s)"
        if self.last_logs:
            message += "\n  last log lines:\n" + "\n".join(f"    {line}" for line in self.last_logs)
        super().__init__(message, hint=hint)
