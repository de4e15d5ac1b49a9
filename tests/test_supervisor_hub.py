"""The gateway's supervisor sessions and relays (pure logic, on one event loop; the supervisor
side is played by the test: it never answers a relay request)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from openshell_core.grpc_api import pb
from openshell_core.server.sandbox_tokens import AUTHORIZATION_METADATA, TokenSigner
from openshell_core.server.supervisor_hub import RelayUnavailable, SupervisorHub
from openshell_core.wire.contract import is_loopback


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


class _Aborted(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code


class _Context:
    """What ``ConnectSupervisor`` reads of its gRPC context: the token, the peer, abort."""

    def __init__(self, token: str) -> None:
        self.token = token

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [(AUTHORIZATION_METADATA, f"Bearer {self.token}")]

    def peer(self) -> str:
        return "ipv4:198.18.0.9:40000"

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


async def _say_hello(hub: SupervisorHub, hello: pb.SupervisorHello) -> pb.GatewayMessage:
    """The gateway's first answer to a supervisor that says ``hello``."""

    async def messages() -> AsyncIterator[pb.SupervisorMessage]:
        yield pb.SupervisorMessage(hello=hello)
        await asyncio.Event().wait()  # the supervisor holds its stream open

    context: Any = _Context(hub.signer.issue(hello.sandbox_id).token)
    answers = hub.connect(messages(), context)
    try:
        return await anext(answers)
    finally:
        await answers.aclose()


def _restarted(faulty: bool) -> SupervisorHub:
    """A gateway's hub after its restart: its store holds the session record of the process
    before (made by another hub on the same store)."""
    store: Any = _Meta()
    signer = TokenSigner(bytes(32))
    SupervisorHub(signer, store, known=lambda _: True)._register(_hello("i1", 1))
    return SupervisorHub(signer, store, known=lambda _: True, stale_owners=faulty)


def test_a_supervisor_coming_back_to_a_restarted_gateway_gets_a_new_session() -> None:
    async def scenario() -> None:
        hub = _restarted(faulty=False)
        answer = await _say_hello(hub, _hello("i1", 2))
        assert answer.HasField("session_accepted")
        record = hub.record("s1")
        assert record is not None and record.epoch == 2
        assert hub.refusal("s1") is None

    asyncio.run(scenario())


def test_with_stale_supervisor_owner_a_restored_record_refuses_the_supervisor_as_a_duplicate() -> (
    None
):
    async def scenario() -> None:
        hub = _restarted(faulty=True)
        with pytest.raises(_Aborted) as refused:
            await _say_hello(hub, _hello("i1", 2))
        assert refused.value.code is grpc.StatusCode.ALREADY_EXISTS
        assert "already has a supervisor session" in (hub.refusal("s1") or "")
        assert not hub.live("s1")

    asyncio.run(scenario())


def test_with_stale_supervisor_owner_a_session_of_the_same_process_is_still_replaced() -> None:
    async def scenario() -> None:
        hub = _hub()
        hub._stale_owners = True
        assert (await _say_hello(hub, _hello("i1", 1))).HasField("session_accepted")
        assert (await _say_hello(hub, _hello("i2", 1))).HasField("session_accepted")

    asyncio.run(scenario())
