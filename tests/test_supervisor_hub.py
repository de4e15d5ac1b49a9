"""The gateway's supervisor sessions and relays (pure logic, on one event loop; the supervisor
side is played by the test: it never answers a relay request)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openshell_core.grpc_api import pb
from openshell_core.server.sandbox_tokens import TokenSigner
from openshell_core.server.supervisor_hub import RelayUnavailable, SupervisorHub, is_loopback


class _Meta:
    """The store's ``meta`` table, which is all the hub keeps there."""

    def __init__(self) -> None:
        self.rows: dict[str, str] = {}

    def get_meta(self, key: str) -> str | None:
        return self.rows.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.rows[key] = value


def _hub(relay_wait: float = 0.2) -> SupervisorHub:
    store: Any = _Meta()
    return SupervisorHub(TokenSigner(bytes(32)), store, known=lambda _: True, relay_wait=relay_wait)


def _hello(instance: str, epoch: int) -> pb.SupervisorHello:
    return pb.SupervisorHello(sandbox_id="s1", instance_id=instance, connection_epoch=epoch)


def test_a_relay_whose_supervisor_never_comes_is_closed_after_the_bound_and_forgotten() -> None:
    async def scenario() -> None:
        hub = _hub()
        session = hub._register(_hello("i1", 1))
        with pytest.raises(RelayUnavailable, match="did not open the relay within"):
            await hub.open_relay("s1")
        assert hub.pending_relays == 0
        asked = session.outbox.get_nowait()
        assert asked is not None and asked.relay_open.HasField("ssh")

    asyncio.run(scenario())


def test_no_relay_is_asked_of_a_sandbox_without_a_live_session() -> None:
    async def scenario() -> None:
        with pytest.raises(RelayUnavailable, match="no live supervisor session"):
            await _hub().open_relay("s1")

    asyncio.run(scenario())


def test_a_returning_supervisor_replaces_the_session_held_for_it() -> None:
    async def scenario() -> None:
        hub = _hub()
        changes: list[tuple[str, bool]] = []
        hub.listen(lambda sandbox, live: changes.append((sandbox, live)))
        old = hub._register(_hello("i1", 1))
        new = hub._register(_hello("i1", 2))
        assert old.ended.is_set() and not new.ended.is_set()
        hub._unregister(old)  # the old stream's end does not take the new session down
        assert hub.live("s1")
        record = hub.record("s1")
        assert record is not None and (record.instance_id, record.epoch) == ("i1", 2)
        assert changes == [("s1", True), ("s1", True)]

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_only_loopback_hosts_are_tcp_targets(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
