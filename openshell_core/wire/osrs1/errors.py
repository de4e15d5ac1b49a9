"""OSRS1: what can go wrong on a resumable stream.

Standard library only (the sandbox image has no third-party packages).
"""

from __future__ import annotations

from openshell_core.errors import OpenShellError


class StreamError(OpenShellError):
    """The resumable stream cannot go on (protocol violation, a peer's error, a refusal)."""


class StreamProtocolError(StreamError):
    """The peer sent something the protocol does not allow."""


class StreamOverflow(StreamError):
    """More unacknowledged bytes than the buffer may hold."""


class OffsetOutOfRange(StreamError):
    """A peer asked to resume from an offset this end no longer (or never) held."""


class PeerError(StreamError):
    """The peer ended the stream with an ERROR frame."""
