"""Gateway image entrypoint (minimal until the reference gateway lands): listen on 30051, exit on
SIGTERM."""

from __future__ import annotations

import asyncio
import signal

PORT = 30051


async def _serve() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"openshell reference gateway\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "0.0.0.0", PORT)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()


if __name__ == "__main__":
    asyncio.run(_serve())
