"""What travels on a sandbox's port 2222 after the NSSH1 preface: the mode magics and EXEC1.

After ``OK`` the first bytes the connecting side sends choose the mode (docs/internals.md):

- ``SSH-``: an SSH client's banner; the supervisor relays the connection to a fresh ``sshd -i``;
- ``EXEC1 {json}\\n``: run one command; the answer is a sequence of frames, ``type`` (1 byte: 1
  stdout, 2 stderr, 3 exit), ``length`` (4 bytes big endian), payload
  (:mod:`openshell_core.wire.frames`); the exit frame's payload is
  the exit code in decimal and it is always the last frame;
- ``OSRS1 ...\\n``: a resumable stream for live SSH sessions
  (:mod:`openshell_core.wire.osrs1`).

This module is standard library only: the sandbox image installs our wheel without dependencies.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from openshell_core.errors import OpenShellError
from openshell_core.wire.frames import HEADER_SIZE, pack_frame, unpack_header

__all__ = [
    "EXEC_MAGIC",
    "MAX_EXEC_REQUEST",
    "MAX_FRAME",
    "RESUME_MAGIC",
    "SSH_MAGIC",
    "ExecEvent",
    "ExecRequest",
    "ExecStream",
    "FrameType",
    "SandboxProtocolError",
    "encode_frame",
    "read_frame",
]

SSH_MAGIC: Final = b"SSH-"
EXEC_MAGIC: Final = b"EXEC1 "
RESUME_MAGIC: Final = b"OSRS1 "
#: Bytes of the longest magic: what the supervisor reads before it knows the mode.
MODE_PROBE: Final = 4
#: The EXEC1 line carries stdin (base64) too; beyond this a request is refused.
MAX_EXEC_REQUEST: Final = 16 * 1024 * 1024
#: Largest payload of one frame; output is cut into chunks no bigger than this.
MAX_FRAME: Final = 1024 * 1024


class SandboxProtocolError(OpenShellError):
    """The peer on port 2222 broke the protocol (bad frame, closed before the exit frame)."""


class FrameType(enum.IntEnum):
    """The type byte of an EXEC1 answer frame."""

    STDOUT = 1
    STDERR = 2
    EXIT = 3


class ExecStream(enum.StrEnum):
    """What an :class:`ExecEvent` carries (a str enum: ``event.kind == "stdout"`` holds)."""

    STDOUT = "stdout"
    STDERR = "stderr"
    EXIT = "exit"


_STREAM_OF: Final = {
    FrameType.STDOUT: ExecStream.STDOUT,
    FrameType.STDERR: ExecStream.STDERR,
    FrameType.EXIT: ExecStream.EXIT,
}


@dataclass(frozen=True)
class ExecEvent:
    """One frame of an EXEC1 answer: output bytes, or (last) the exit code in ``data``."""

    kind: ExecStream
    data: bytes = b""

    @property
    def exit_code(self) -> int | None:
        return int(self.data) if self.kind is ExecStream.EXIT else None


@dataclass(frozen=True)
class ExecRequest:
    """What EXEC1 asks for. ``env`` is added to the supervisor's (secret-free) environment."""

    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    workdir: str | None = None
    stdin: bytes | None = None

    def encode(self) -> bytes:
        body: dict[str, object] = {"argv": list(self.argv), "env": dict(self.env)}
        if self.workdir is not None:
            body["workdir"] = self.workdir
        if self.stdin is not None:
            body["stdin"] = base64.b64encode(self.stdin).decode()
        line = EXEC_MAGIC + json.dumps(body, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_EXEC_REQUEST:
            raise ValueError(f"EXEC1 request of {len(line)} bytes exceeds {MAX_EXEC_REQUEST}")
        return line

    @classmethod
    def decode(cls, line: bytes) -> ExecRequest:
        """Parse an ``EXEC1 {json}\\n`` line.

        :raises ValueError: naming what is wrong.
        """
        if not line.startswith(EXEC_MAGIC) or not line.endswith(b"\n"):
            raise ValueError("not an EXEC1 line")
        try:
            body = json.loads(line[len(EXEC_MAGIC) :])
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"EXEC1 body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("EXEC1 body is not an object")
        argv, env = body.get("argv"), body.get("env", {})
        workdir, stdin = body.get("workdir"), body.get("stdin")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise ValueError("EXEC1 argv must be a non-empty list of strings")
        if not (
            isinstance(env, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
        ):
            raise ValueError("EXEC1 env must map strings to strings")
        if workdir is not None and not isinstance(workdir, str):
            raise ValueError("EXEC1 workdir must be a string")
        data = None
        if stdin is not None:
            try:
                data = base64.b64decode(str(stdin), validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("EXEC1 stdin is not base64") from None
        return cls(argv=argv, env=env, workdir=workdir, stdin=data)


def encode_frame(kind: FrameType, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise ValueError(f"frame payload of {len(payload)} bytes exceeds {MAX_FRAME}")
    return pack_frame(int(kind), payload)


def exit_frame(code: int) -> bytes:
    return encode_frame(FrameType.EXIT, str(code).encode())


async def read_frame(reader: asyncio.StreamReader) -> ExecEvent | None:
    """The next frame, or None at a clean end of stream (before any header byte).

    :raises SandboxProtocolError: on a truncated or invalid frame.
    """
    try:
        header = await reader.readexactly(HEADER_SIZE)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise SandboxProtocolError("connection closed inside a frame header") from None
    kind, length = unpack_header(header)
    if kind not in FrameType._value2member_map_ or length > MAX_FRAME:
        raise SandboxProtocolError(f"invalid frame (type {kind}, length {length})")
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise SandboxProtocolError("connection closed inside a frame") from None
    event = ExecEvent(_STREAM_OF[FrameType(kind)], payload)
    if event.kind is ExecStream.EXIT and not payload.lstrip(b"-").isdigit():
        raise SandboxProtocolError(f"exit frame without an exit code: {payload!r}")
    return event
