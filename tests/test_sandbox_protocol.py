"""Port 2222's wire format (EXEC1 requests, answer frames) and the supervisor's configuration."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from openshell_core.sandbox import sshd
from openshell_core.sandbox.supervisor import ConfigError, SupervisorConfig, parse_listen
from openshell_core.wire.exec1 import (
    EXEC_MAGIC,
    MAX_FRAME,
    ExecEvent,
    ExecRequest,
    ExecStream,
    FrameType,
    SandboxProtocolError,
    encode_frame,
    exit_frame,
    read_frame,
)

SECRET = "ab" * 32


def frames(data: bytes) -> list[ExecEvent]:
    async def scenario() -> list[ExecEvent]:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        events = []
        while (event := await read_frame(reader)) is not None:
            events.append(event)
        return events

    return asyncio.run(scenario())


def test_exec_request_round_trips() -> None:
    request = ExecRequest(["sh", "-c", "cat"], {"A": "1"}, "/tmp", b"\x00\xffdata")
    line = request.encode()
    assert line.startswith(EXEC_MAGIC)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert ExecRequest.decode(line) == request


def test_exec_request_without_options_omits_them() -> None:
    body = json.loads(ExecRequest(["true"]).encode()[len(EXEC_MAGIC) :])
    assert body == {"argv": ["true"], "env": {}}


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (b"EXEC1 {not json}\n", "not JSON"),
        (b"EXEC1 []\n", "not an object"),
        (b'EXEC1 {"argv": []}\n', "argv"),
        (b'EXEC1 {"argv": ["a", 1]}\n', "argv"),
        (b'EXEC1 {"argv": ["a"], "env": {"A": 1}}\n', "env"),
        (b'EXEC1 {"argv": ["a"], "workdir": 3}\n', "workdir"),
        (b'EXEC1 {"argv": ["a"], "stdin": "***"}\n', "base64"),
        (b'EXEC1 {"argv": ["a"]}', "not an EXEC1 line"),
        (b'EXEC2 {"argv": ["a"]}\n', "not an EXEC1 line"),
    ],
)
def test_bad_exec_request_is_refused_with_the_reason(line: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        ExecRequest.decode(line)


def test_frames_round_trip_and_end_with_the_exit_code() -> None:
    data = encode_frame(FrameType.STDOUT, b"out") + encode_frame(FrameType.STDERR, b"")
    data += exit_frame(-1)
    assert frames(data) == [
        ExecEvent(ExecStream.STDOUT, b"out"),
        ExecEvent(ExecStream.STDERR, b""),
        ExecEvent(ExecStream.EXIT, b"-1"),
    ]
    assert frames(exit_frame(42))[0].exit_code == 42


def test_frame_header_is_type_then_big_endian_length() -> None:
    assert encode_frame(FrameType.STDERR, b"xy") == b"\x02\x00\x00\x00\x02xy"


def test_event_kinds_compare_equal_to_their_names() -> None:
    assert ExecEvent(ExecStream.STDOUT, b"").kind == "stdout"
    assert ExecEvent(ExecStream.EXIT, b"0").kind == "exit"
    assert ExecEvent(ExecStream.STDOUT, b"x").exit_code is None


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x00\x00",  # truncated header
        b"\x01\x00\x00\x00\x05abc",  # truncated payload
        b"\x09\x00\x00\x00\x00",  # unknown type
        encode_frame(FrameType.EXIT, b"x"),  # exit without a number
        b"\x01" + (MAX_FRAME + 1).to_bytes(4, "big"),  # oversized
    ],
)
def test_broken_frames_are_protocol_errors(data: bytes) -> None:
    with pytest.raises(SandboxProtocolError):
        frames(data)


def test_oversized_frame_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(FrameType.STDOUT, b"x" * (MAX_FRAME + 1))


# -- supervisor configuration ------------------------------------------------------------------


def test_config_requires_the_handshake_secret() -> None:
    with pytest.raises(ConfigError, match="OPENSHELL_SSH_HANDSHAKE_SECRET is required"):
        SupervisorConfig.from_env({})


def test_config_reads_skew_listen_address_and_keys() -> None:
    config = SupervisorConfig.from_env(
        {
            "OPENSHELL_SSH_HANDSHAKE_SECRET": SECRET,
            "OPENSHELL_SSH_HANDSHAKE_SKEW_SECS": "30",
            "OPENSHELL_SSH_LISTEN_ADDR": "127.0.0.1:2200",
            "OPENSHELL_SSH_HOST_KEY": "KEY",
            "OPENSHELL_SSH_AUTHORIZED_KEYS": "ssh-ed25519 AAAA a\nssh-ed25519 BBBB b",
        }
    )
    assert (config.host, config.port, config.skew) == ("127.0.0.1", 2200, 30)
    assert config.host_key == "KEY"
    assert config.authorized_keys.splitlines() == ["ssh-ed25519 AAAA a", "ssh-ed25519 BBBB b"]


def test_config_defaults_follow_the_contract() -> None:
    config = SupervisorConfig.from_env({"OPENSHELL_SSH_HANDSHAKE_SECRET": SECRET})
    assert (config.host, config.port, config.skew) == ("0.0.0.0", 2222, 300)


def test_children_get_the_environment_without_the_secrets() -> None:
    config = SupervisorConfig.from_env(
        {
            "OPENSHELL_SSH_HANDSHAKE_SECRET": SECRET,
            "OPENSHELL_SSH_HOST_KEY": "KEY",
            "OPENSHELL_SANDBOX_ID": "sbx",
        }
    )
    assert dict(config.child_env) == {"OPENSHELL_SANDBOX_ID": "sbx"}
    assert SECRET not in repr(config)


@pytest.mark.parametrize(
    ("text", "address"),
    [("0.0.0.0:2222", ("0.0.0.0", 2222)), ("[::]:22", ("::", 22)), (":2222", ("0.0.0.0", 2222))],
)
def test_listen_address_forms(text: str, address: tuple[str, int]) -> None:
    assert parse_listen(text) == address


@pytest.mark.parametrize("text", ["2222", "host:", "host:99999", "host:x"])
def test_bad_listen_address_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen(text)


def test_bad_skew_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="SKEW"):
        SupervisorConfig.from_env(
            {"OPENSHELL_SSH_HANDSHAKE_SECRET": SECRET, "OPENSHELL_SSH_HANDSHAKE_SKEW_SECS": "x"}
        )


def test_sshd_config_passes_only_plain_sandbox_identity_into_sessions() -> None:
    text = sshd.sshd_config(
        sshd.SshdFiles(Path("/")),
        {"OPENSHELL_SANDBOX_ID": "sbx-1", "OPENSHELL_SANDBOX": 'evil" x', "OTHER": "y"},
    )
    assert "SetEnv OPENSHELL_SANDBOX_ID=sbx-1\n" in text
    assert "evil" not in text
    assert "OTHER" not in text
    assert "UsePAM no\n" in text
