"""The gateway's TCP connection to a sandbox's supervisor: the name lookup never outlives its
caller's wait, and never holds up the gateway's exit."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from openshell_core.server import sandbox_link


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


@pytest.fixture
def unanswered(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """Every name lookup blocks until the returned event is set (the engine's DNS leaving an
    unknown name unanswered), then fails as unknown; set at the end of the test, so no thread
    is left behind. No lookup leaves the machine."""
    release = threading.Event()

    def blocked(host: Any, *args: Any, **kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_NONAME, f"{host}: no answer (test)")

    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    yield release
    release.set()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    await writer.wait_closed()


def test_a_name_is_connected_to_at_its_address(listener: int) -> None:
    async def main() -> None:
        _, writer = await sandbox_link.connect("localhost", listener, timeout=5)
        assert writer.get_extra_info("peername")[1] == listener
        await _close(writer)

    asyncio.run(main())


def test_an_address_is_connected_to_without_a_lookup(
    listener: int, unanswered: threading.Event
) -> None:
    async def main() -> None:
        _, writer = await sandbox_link.connect("127.0.0.1", listener, timeout=5)
        await _close(writer)

    asyncio.run(main())


def test_an_unanswered_lookup_ends_the_wait_at_the_callers_timeout(
    unanswered: threading.Event,
) -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            await sandbox_link.connect("sandbox-gone", 2222, timeout=0.2)

    asyncio.run(main())


def test_an_unanswered_lookup_does_not_hold_up_the_exit_of_the_event_loop(
    unanswered: threading.Event,
) -> None:
    # asyncio.run() waits for its executor's threads at the end: a lookup there kept the
    # gateway's process alive for the C library's 10 s after it had stopped.
    async def probe() -> None:
        with pytest.raises(TimeoutError):
            await sandbox_link.connect("sandbox-gone", 2222, timeout=0.05)

    loop_ended = threading.Event()
    runner = threading.Thread(target=lambda: (asyncio.run(probe()), loop_ended.set()))
    runner.start()
    try:
        assert loop_ended.wait(10), "the event loop's exit waited for the unanswered lookup"
        assert not unanswered.is_set()  # the lookup was still blocked when the loop ended
    finally:
        unanswered.set()
        runner.join(10)
