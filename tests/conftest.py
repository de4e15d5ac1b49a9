"""Shared fixtures for the project's own tests.

Integration tests run against a real Docker engine: the default private engine, started here when it
is not running (and stopped at the end of the session when this session started it). Tests that
disrupt a daemon (restart, crash) get a throw-away engine of their own from ``lab_engine_factory``.
Nothing here skips: when no engine can be had, the fixture fails with the reason and the fix.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kube_emulator import SANDBOX_CRD, KubeEmulator

from openshell_core.engine import Engine, PrivateEngine
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, engines_dir
from openshell_core.errors import OpenShellError
from openshell_core.images import ImageSet, ensure_base_image, ensure_images


@pytest.fixture(scope="session")
def private_engine() -> Iterator[PrivateEngine]:
    """The session's private engine, held by a lease: started when needed, and stopped at the end
    only when this session started it and no other session still holds it."""
    engine = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir() / DEFAULT_ENGINE_NAME)
    lease = engine.lease()
    try:
        lease.__enter__()
    except OpenShellError as exc:
        pytest.fail(
            f"the tests need a Docker engine and none could be started:\n{exc}", pytrace=False
        )
    try:
        yield engine
    finally:
        lease.__exit__(None, None, None)


@pytest.fixture(scope="session")
def engine(private_engine: PrivateEngine) -> Iterator[Engine]:
    handle = private_engine.connect()
    yield handle
    handle.close()


@pytest.fixture(scope="session")
def images(engine: Engine) -> ImageSet:
    """Gateway, upgrade-gateway and sandbox images, built offline on the session engine."""
    return ensure_images(engine)


@pytest.fixture(scope="session")
def base_image(engine: Engine) -> str:
    return ensure_base_image(engine)


@pytest.fixture
def unique_name() -> str:
    """A short name no other test or run uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def lab_engine_factory() -> Iterator[Callable[[], PrivateEngine]]:
    """Throw-away private engines under short temporary roots, purged at the end of the module."""
    made: list[tuple[PrivateEngine, Path]] = []

    def make() -> PrivateEngine:
        root = Path(tempfile.mkdtemp(prefix="ose-", dir="/tmp"))
        engine = PrivateEngine(f"lab-{root.name}", root)
        made.append((engine, root))
        return engine

    yield make
    for engine, root in made:
        engine.purge()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    """An in-process Kubernetes API server (``tests/kube_emulator.py``) serving the built-in
    resources and the agent-sandbox ``Sandbox`` CRD; no controllers run unless a test adds one."""
    emulator = KubeEmulator()
    emulator.declare(SANDBOX_CRD)
    emulator.start()
    yield emulator
    emulator.stop()


@pytest.fixture
def kube_client(kube: KubeEmulator) -> Iterator[Any]:
    """An official ``kubernetes`` client ``ApiClient`` pointed at :func:`kube`."""
    # Imported here: the client takes seconds to import, and most sessions never use it.
    from kubernetes import client  # noqa: PLC0415

    configuration = client.Configuration()
    configuration.host = kube.url
    api = client.ApiClient(configuration)
    yield api
    api.close()


@dataclass
class FakeClock:
    """A monotonic clock that advances only when something sleeps on it: waits under test take
    no real time, and what they slept is recorded."""

    now: float = 100.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"slept a negative time: {seconds}"
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_ability(ability): a driver compliance test, run for the drivers that declare it",
    )
