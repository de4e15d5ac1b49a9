"""Recovery latency per scenario, beside the floor, in one run on one machine.

For each core scenario (and docker-crash, docker-daemon-kill), over ``--repeat`` runs:

- **reference**, once per transport (``nssh1``: the gateway dials each sandbox's supervisor;
  ``supervisor``: each supervisor dials out and holds a session): a reference gateway deployed with
  that transport and two sandboxes is disrupted with the scenario's own steps
  (``pytest_openshell.scenarios``) and recovered as a user would; the figure is the time from the
  start of the disruption until the API answers, every sandbox is Ready and each answers a new SSH
  session. A session held open across the scenario reports how long its stream stalled
  (``ssh-proxy``'s "resumed after" line), or that it ended (the sandbox restarted). Beside it,
  what one SSH check takes with nothing disrupted: the Ready + SSH figure includes one, the
  floor has nothing like it.
- **floor**: the same disruption done with plain engine operations to a bare container of the base
  image serving HTTP (e.g. ``docker kill`` + network re-made + ``docker start`` + port answers;
  daemon restart + port answers), measured once per scenario in the same run and shared by both
  transports' rows.

Usage: python benchmarks/recovery.py [--repeat N] [--scenarios a,b] [--transports t,u]
       [--json FILE]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import free_port, machine, median, summarise, wait_for_tcp  # beside this script

from openshell_core import labels
from openshell_core.engine import Engine, PrivateEngine
from openshell_core.engine.private import DEFAULT_ENGINE_NAME, engines_dir
from openshell_core.host.api_client import GatewayClient
from openshell_core.host.sshproxy.ssh_command import ensure_user_key, ssh_command
from openshell_core.images import ImageSet, ensure_base_image, ensure_images
from openshell_core.retry import poll_until
from openshell_core.runs import RunLease, new_run_id, remove_run_objects, runs_dir
from openshell_core.wire.contract import AUTHORIZED_KEYS_ENV, TRANSPORTS
from pytest_openshell.drivers import GatewayHandle, GatewaySpec, ReferenceDriver
from pytest_openshell.fixtures import HeldSession, SessionEnded
from pytest_openshell.options import GatewayOptions
from pytest_openshell.scenarios import BUILTIN, Scenario, ScenarioRun

SCENARIOS = (
    "stop-start",
    "kill",
    "remove-keep-volume",
    "image-upgrade",
    "docker-restart",
    "docker-crash",
    "docker-daemon-kill",
)
COUNTER = 'i=0; while :; do echo "tick $i"; i=$((i+1)); sleep 0.1; done'
RESUMED = re.compile(r"resumed after ([0-9.]+) s")
HTTP_PROBE = b"GET / HTTP/1.0\r\n\r\n"
#: Issue 13's targets, as multiples of the floor: 2x where only the gateway's container is
#: touched, 3x where the daemon itself goes (every container restarts or is adopted).
GATEWAY_ONLY_TARGET = 2.0
DAEMON_TARGET = 3.0
GATEWAY_ONLY = ("stop-start", "kill", "remove-keep-volume", "image-upgrade")


@dataclass
class Sample:
    """One reference run: seconds from the start of the disruption."""

    api: float
    ready: float
    #: seconds the held session's stream stalled, or None when the session ended
    stall: float | None


def _failure(what: str, exc: Exception) -> str:
    detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{what}: {type(exc).__name__}: {detail}"


@dataclass
class Reference:
    """The reference gateway's runs of one scenario in one transport."""

    transport: str
    samples: list[Sample] = field(default_factory=list)
    #: seconds one SSH check takes with nothing disrupted (what the Ready + SSH figure includes
    #: that the floor does not)
    ssh_check: list[float] = field(default_factory=list)
    #: measurements that failed, each with what went wrong: the row keeps the others
    failures: list[str] = field(default_factory=list)


@dataclass
class Row:
    scenario: str
    #: the floor, measured once and shared by every transport's line
    floor: list[float] = field(default_factory=list)
    reference: dict[str, Reference] = field(default_factory=dict)
    #: floor measurements that failed
    failures: list[str] = field(default_factory=list)

    def of(self, transport: str) -> Reference:
        return self.reference.setdefault(transport, Reference(transport))

    def ratio(self, transport: str) -> float | None:
        samples = self.of(transport).samples
        if not samples or not self.floor:
            return None
        return median([s.ready for s in samples]) / median(self.floor)

    def failed(self, what: str, exc: Exception, transport: str | None = None) -> None:
        text = _failure(what, exc)
        if transport is None:
            self.failures.append(text)
        else:
            self.of(transport).failures.append(text)
        where = f"{self.scenario} ({transport})" if transport else self.scenario
        print(f"[bench] {where}: {text}", file=sys.stderr)

    def all_failures(self) -> list[str]:
        found = [f"{self.scenario}, floor, {failure}" for failure in self.failures]
        for transport, runs in self.reference.items():
            found += [f"{self.scenario}, {transport}, {failure}" for failure in runs.failures]
        return found


class Bench:
    """The engine, the run's identity and the user's key."""

    def __init__(self, engine: Engine, workdir: Path) -> None:
        self.engine = engine
        self.run_id = new_run_id()
        self.config_home = workdir / "config"
        self.config_home.mkdir(parents=True)
        self.key = ensure_user_key(workdir / "id_ed25519", comment="benchmark")
        self.driver = ReferenceDriver(engine, self.config_home)
        self.images = ImageSet()
        self.env = {"XDG_CONFIG_HOME": str(self.config_home)}

    def client(self, gateway: GatewayHandle) -> GatewayClient:
        return GatewayClient.for_gateway(gateway.name, env=self.env, timeout=5)

    def deploy(self, label: str, transport: str) -> GatewayHandle:
        spec = GatewaySpec(
            name=f"bench-{self.run_id[:6]}-{label}",
            port=free_port(),
            options=GatewayOptions(self.images, transport=transport),
            run_id=self.run_id,
        )
        return self.driver.deploy(spec)

    def ssh_argv(
        self, gateway: GatewayHandle, sandbox: str, remote: str, *, resume: bool
    ) -> list[str]:
        with self.client(gateway) as client:
            info = client.get_sandbox(sandbox)
            session = client.create_ssh_session(sandbox)
        return ssh_command(
            gateway.name,
            session.sandbox_id,
            session.token,
            info.host_public_key,
            self.key,
            [remote],
            known_hosts_file=self.config_home / f"known-{info.id}",
            resume=resume,
        )

    def answers_ssh(self, gateway: GatewayHandle, sandbox: str) -> bool:
        try:
            argv = self.ssh_argv(gateway, sandbox, "true", resume=False)
        except Exception:
            return False
        result = subprocess.run(argv, capture_output=True, timeout=60, check=False, env=self._env())
        return result.returncode == 0

    def hold(self, gateway: GatewayHandle, sandbox: str) -> HeldSession:
        argv = self.ssh_argv(gateway, sandbox, COUNTER, resume=True)
        process = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
        )
        held = HeldSession(process)
        try:
            held.wait_for(lambda out: b"tick 3\n" in out, timeout=60)
        except BaseException:
            held.close()
            raise
        return held

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.env}


def wait_recovered(
    bench: Bench, gateway: GatewayHandle, names: list[str], started: float
) -> Sample:
    """Poll until the API answers, then until every sandbox is Ready and answers SSH."""
    api: list[float] = []

    def recovered(pool: concurrent.futures.ThreadPoolExecutor) -> dict[str, str]:
        with bench.client(gateway) as client:
            client.health()
            api[:] = api or [time.monotonic() - started]
            phases = {info.name: info.phase for info in client.list_sandboxes()}
        # The sandboxes are checked at once, not one after the other: the figure is when the
        # last of them answers, not the sum of the checks' own latencies.
        if all(phases.get(name) == "READY" for name in names):
            answered = pool.map(lambda name: bench.answers_ssh(gateway, name), names)
            for name, ok in zip(names, answered, strict=True):
                phases[name] = "READY" if ok else "READY, no SSH"
        return phases

    with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
        poll_until(
            lambda: recovered(pool),
            lambda phases: all(phases.get(name) == "READY" for name in names),
            timeout=max(0.0, started + 300 - time.monotonic()),
            what=f"recovery of gateway {gateway.name}",
            retry_on=(Exception,),  # any failure of the client while the gateway comes back
            schedule=(0.05, 1.0, 0.05),
        )
    return Sample(api=api[0], ready=time.monotonic() - started, stall=None)


def measure_reference(
    bench: Bench, scenario: Scenario, transport: str, repeats: int, row: Row
) -> None:
    """Add ``repeats`` samples of ``transport`` to ``row``; a run that fails is noted in the row,
    not raised."""
    runs = row.of(transport)
    try:
        gateway = bench.deploy(f"{scenario.key.replace('-', '')[:8]}-{transport[:3]}", transport)
    except Exception as exc:
        row.failed("deploy", exc, transport)
        return
    names = ["one", "two"]
    try:
        with bench.client(gateway) as client:
            for name in names:
                wanted = {AUTHORIZED_KEYS_ENV: bench.key.with_suffix(".pub").read_text().strip()}
                client.create_sandbox(name, environment=wanted)
            for name in names:
                client.wait_ready(name, timeout=120)
        for _ in range(repeats):
            started = time.monotonic()
            if bench.answers_ssh(gateway, names[0]):
                runs.ssh_check.append(time.monotonic() - started)
        for attempt in range(1, repeats + 1):
            try:
                runs.samples.append(measure_once(bench, scenario, gateway, names))
            except Exception as exc:
                row.failed(f"reference run {attempt}", exc, transport)
    except Exception as exc:
        row.failed("sandboxes", exc, transport)
    finally:
        bench.driver.destroy(gateway)


def measure_once(
    bench: Bench, scenario: Scenario, gateway: GatewayHandle, names: list[str]
) -> Sample:
    held = bench.hold(gateway, names[0])
    try:
        run = ScenarioRun(scenario, gateway, bench.driver, bench.engine)
        started = time.monotonic()
        scenario.disrupt(run)
        scenario.recover(run)
        sample = wait_recovered(bench, gateway, names, started)
        # Decided by what the session does next, not by a look at it first: it may end at any
        # moment after a scenario that restarts its sandbox.
        mark = len(held.output)
        try:
            held.wait_for(lambda out: len(out) > mark + 20, timeout=60)
        except SessionEnded:
            sample.stall = None
        else:
            stalls = RESUMED.findall(held.errors)
            sample.stall = float(stalls[-1]) if stalls else held.longest_stall(started)
        return sample
    finally:
        held.close()


class FloorBox:
    """A bare container of the base image serving HTTP on a published port: the floor."""

    def __init__(self, bench: Bench, base_image: str) -> None:
        self.engine = bench.engine
        self.name = f"bench-floor-{bench.run_id[:6]}"
        self.port = free_port()
        self.base = base_image
        self.other = f"{base_image.split(':', maxsplit=1)[0]}:bench-upgrade"
        self.labels = labels.ownership(role="benchmark", run_id=bench.run_id)
        self.engine.tag_image(base_image, self.other)
        self.engine.create_network(self.name, labels=self.labels)
        self.engine.create_volume(self.name, labels=self.labels)
        self.create(self.base)
        self.engine.start_container(self.name)
        self.up()

    def create(self, image: str) -> None:
        self.engine.create_container(
            name=self.name,
            image=image,
            command=["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0"],
            network=self.name,
            ports={"8000/tcp": ("127.0.0.1", self.port)},
            binds=[f"{self.name}:/data"],
            restart_policy="unless-stopped",
            labels=self.labels,
        )

    def up(self) -> None:
        wait_for_tcp("127.0.0.1", self.port, payload=HTTP_PROBE)

    def steps(self) -> dict[str, Callable[[], None]]:
        engine, name = self.engine, self.name

        def stop_start() -> None:
            engine.stop_container(name, timeout=10)
            engine.start_container(name)

        def kill() -> None:
            engine.kill_container(name)
            engine.disconnect_network(name, name)
            engine.remove_network(name)
            engine.create_network(name, labels=self.labels)
            engine.connect_network(name, name)
            engine.start_container(name)

        def recreate(image: str) -> Callable[[], None]:
            def step() -> None:
                engine.remove_container(name, force=True)
                self.create(image)
                engine.start_container(name)

            return step

        def kill_daemon() -> None:
            # dockerd and containerd die, the container goes on; `engine start` adopts it.
            engine.kill_daemon()
            engine.start_daemon()

        return {
            "stop-start": stop_start,
            "kill": kill,
            "remove-keep-volume": recreate(self.base),
            "image-upgrade": recreate(self.other),
            "docker-restart": engine.restart_daemon,
            "docker-crash": engine.crash_daemon,
            "docker-daemon-kill": kill_daemon,
        }

    def measure(self, key: str) -> float:
        step = self.steps()[key]
        started = time.monotonic()
        step()
        self.up()
        return time.monotonic() - started

    def close(self) -> None:
        self.engine.remove_container(self.name, force=True)
        self.engine.remove_volume(self.name)
        self.engine.remove_network(self.name)
        self.engine.remove_image(self.other)


def measure_floor(bench: Bench, base: str, key: str, repeats: int, row: Row) -> None:
    """Add ``repeats`` floor samples to ``row``; a failure is noted in the row, not raised."""
    try:
        floor = FloorBox(bench, base)
    except Exception as exc:
        row.failed("floor set-up", exc)
        return
    try:
        for attempt in range(1, repeats + 1):
            try:
                row.floor.append(floor.measure(key))
            except Exception as exc:
                row.failed(f"floor run {attempt}", exc)
    finally:
        try:
            floor.close()
        except Exception as exc:
            row.failed("floor clean-up", exc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument(
        "--transports",
        default=",".join(TRANSPORTS),
        help=f"the reference gateway's transports to measure (default {','.join(TRANSPORTS)})",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the samples here")
    args = parser.parse_args()
    keys = [key.strip() for key in args.scenarios.split(",") if key.strip()]
    transports = [name.strip() for name in args.transports.split(",") if name.strip()]
    unknown = [name for name in transports if name not in TRANSPORTS]
    if unknown:
        parser.error(f"unknown transport(s) {', '.join(unknown)}; known: {', '.join(TRANSPORTS)}")
    scenarios = {scenario.key: scenario for scenario in BUILTIN}

    private = PrivateEngine(DEFAULT_ENGINE_NAME, engines_dir() / DEFAULT_ENGINE_NAME)
    rows: list[Row] = []
    with private.lease(), tempfile.TemporaryDirectory(prefix="osbench-") as work:
        engine = private.connect()
        ensure_images(engine)
        base = ensure_base_image(engine)
        bench = Bench(engine, Path(work))
        with RunLease(bench.run_id, runs_dir()).held():
            try:
                for key in keys:
                    row = Row(key)
                    rows.append(row)
                    measure_floor(bench, base, key, args.repeat, row)
                    for transport in transports:
                        measure_reference(bench, scenarios[key], transport, args.repeat, row)
                        ready = summarise([s.ready for s in row.of(transport).samples])
                        print(f"[bench] {key}: floor {summarise(row.floor)}, {transport} {ready}",
                              file=sys.stderr)  # fmt: skip
            finally:
                remove_run_objects(engine, {bench.run_id})
                engine.close()

    print(f"machine: {machine()}")
    print(f"repeats: {args.repeat} (min / median / max seconds)\n")
    print(
        "| scenario | transport | floor: bare container | reference: API answers | reference: "
        "every sandbox Ready + SSH | ratio (median) | target | held SSH session | one SSH check, "
        "nothing disrupted |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for transport in transports:
            print(table_row(row, transport))
    failures = [f"- {failure}" for row in rows for failure in row.all_failures()]
    if failures:
        print("\nFailed measurements (their rows show the runs that succeeded):\n")
        print("\n".join(failures))
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    return 1 if failures else 0


def table_row(row: Row, transport: str) -> str:
    def figures(samples: list[float]) -> str:
        return summarise(samples) if samples else "failed"

    runs = row.of(transport)
    samples = runs.samples
    stalls = [s.stall for s in samples if s.stall is not None]
    if not samples:
        session = "failed"
    elif len(stalls) == len(samples):
        session = f"stalled {summarise(stalls)} s"
    elif stalls:
        session = f"ended in {len(samples) - len(stalls)} of {len(samples)} runs"
    else:
        session = "ended (sandbox restarted)"
    api = figures([s.api for s in samples])
    ready = figures([s.ready for s in samples])
    ratio = row.ratio(transport)
    target = GATEWAY_ONLY_TARGET if row.scenario in GATEWAY_ONLY else DAEMON_TARGET
    verdict = "n/a" if ratio is None else "met" if ratio <= target else "missed"
    shown = "n/a" if ratio is None else f"{ratio:.1f}x"
    failed = len(runs.failures) + len(row.failures)
    note = f" ({failed} failed)" if failed else ""
    return (
        f"| {row.scenario}{note} | {transport} | {figures(row.floor)} | {api} | {ready} | "
        f"{shown} | {target:g}x {verdict} | {session} | {figures(runs.ssh_check)} |"
    )


if __name__ == "__main__":
    raise SystemExit(main())
