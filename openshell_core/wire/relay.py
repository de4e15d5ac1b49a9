"""A two-way byte relay between asyncio streams that passes half-closes on.

Used by the supervisor (connection <-> ``sshd -i`` pipes), the gateway's tunnel (TLS <-> sandbox
TCP) and ``ssh-proxy`` (stdin/stdout <-> TLS). When one side ends its output the other side's
input is ended too (``write_eof``), so a command reading to end of input still sees it and its
answer still flows back. A transport that cannot half-close (TLS) cannot be told; then the relay
either ends or waits for the other direction, as :class:`EofPolicy` says. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
from typing import Final

CHUNK: Final = 65536


class EofPolicy(enum.Enum):
    """What a relay does when one side's input ends and the other side cannot be told."""

    #: End the whole relay (the far side learns from the close): right when the side that ended
    #: is the one that answers, e.g. a sandbox whose sshd exited, seen through TLS.
    CLOSE = "close"
    #: Keep relaying the other way until it ends too: right when the side that ended is the one
    #: that asks, e.g. ssh-proxy's stdin, whose answer must still come back through TLS.
    WAIT = "wait"


class PumpEnd(enum.Enum):
    """How one direction of a relay ended."""

    HALF_CLOSED = "half-closed"  # the source ended and the sink was told (write_eof)
    CLOSED = "closed"  # the source ended and the sink cannot half-close
    BROKEN = "broken"  # an I/O error on either end


async def pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, chunk: int = CHUNK
) -> PumpEnd:
    """Copy ``source`` to ``sink`` until the source ends; then pass the end on when possible."""
    try:
        while data := await source.read(chunk):
            sink.write(data)
            await sink.drain()
        if sink.can_write_eof() and not sink.is_closing():
            sink.write_eof()
            return PumpEnd.HALF_CLOSED
    except (OSError, RuntimeError):  # RuntimeError: write_eof on a transport already closing
        return PumpEnd.BROKEN
    return PumpEnd.CLOSED


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a writer and wait (briefly) for it, ignoring a peer that is already gone."""
    writer.close()
    with contextlib.suppress(OSError, asyncio.TimeoutError, RuntimeError):
        await asyncio.wait_for(writer.wait_closed(), 2)


async def relay(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
    *,
    chunk: int = CHUNK,
    a_eof: EofPolicy = EofPolicy.CLOSE,
) -> None:
    """Copy bytes both ways until both directions have ended, or either breaks; close both.

    :param a_eof: what to do when ``a``'s input ends and ``b_writer`` cannot half-close (when the
        other end of ``b`` ends first and ``a_writer`` cannot half-close, the relay always ends).
    """
    forward = asyncio.ensure_future(pump(a_reader, b_writer, chunk=chunk))
    backward = asyncio.ensure_future(pump(b_reader, a_writer, chunk=chunk))
    pending: set[asyncio.Future[PumpEnd]] = {forward, backward}

    def ends_relay(task: asyncio.Future[PumpEnd]) -> bool:
        end = task.result()
        if end is PumpEnd.HALF_CLOSED:
            return False
        return not (task is forward and end is PumpEnd.CLOSED and a_eof is EofPolicy.WAIT)

    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if any(ends_relay(task) for task in done):
                break
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(close_writer(a_writer), close_writer(b_writer))


async def stdio_streams(
    stdin: int = 0, stdout: int = 1
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Asyncio streams over this process's stdin and stdout (pipes, sockets or terminals).

    The file descriptors are duplicated, so closing the streams (which passes the end of the
    output on to whoever reads it) leaves ``sys.stdin``/``sys.stdout`` alone.

    :raises ValueError: when either is a regular file (asyncio cannot poll those).
    """
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK)
    read_protocol = asyncio.StreamReaderProtocol(reader)
    source = os.fdopen(os.dup(stdin), "rb", buffering=0)
    sink = os.fdopen(os.dup(stdout), "wb", buffering=0)
    try:
        await loop.connect_read_pipe(lambda: read_protocol, source)
        transport, protocol = await loop.connect_write_pipe(_WriteProtocol, sink)
    except BaseException:
        source.close()
        sink.close()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


class _WriteProtocol(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """What a StreamWriter over a write pipe needs: drain() support and a close waiter."""

    def __init__(self) -> None:
        super().__init__()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed
