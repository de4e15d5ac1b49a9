"""What the benchmark scripts share: timing, the machine line, summaries, a TCP wait."""

from __future__ import annotations

import os
import platform
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from openshell_core.retry import poll_until


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def machine() -> str:
    cpus = os.cpu_count()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpus} cores, {memory:.0f} GiB, Linux {platform.release()}"


def summarise(samples: Sequence[float]) -> str:
    """``min / median / max`` (or the one sample), in seconds with two decimals."""
    if not samples:
        return "-"
    if len(samples) == 1:
        return f"{samples[0]:.2f}"
    return f"{min(samples):.2f} / {statistics.median(samples):.2f} / {max(samples):.2f}"


def median(samples: Sequence[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def wait_for_tcp(host: str, port: int, *, timeout: float = 120.0, payload: bytes = b"") -> float:
    """Poll until ``host:port`` accepts a connection (and answers ``payload`` with something);
    returns the seconds waited."""
    started = time.monotonic()

    def answers() -> bool:
        with socket.create_connection((host, port), timeout=1) as conn:
            if not payload:
                return True
            conn.sendall(payload)
            return bool(conn.recv(16))

    # Polled every 20 ms: this is the floor the recoveries are measured against.
    poll_until(
        answers,
        bool,
        timeout=timeout,
        what=f"{host}:{port} answering",
        retry_on=(OSError,),
        schedule=(0.02, 1.0, 0.02),
    )
    return time.monotonic() - started


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_process(command: Sequence[str], cwd: Path) -> tuple[float, str]:
    """Run ``command`` as a whole process (without the caller's PYTEST_* settings); its wall
    time and stdout.

    :raises RuntimeError: with the end of its output, when it fails.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTEST_")}
    started = time.perf_counter()
    result = subprocess.run(
        list(command), cwd=cwd, env=env, capture_output=True, text=True, check=False
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed, result.stdout


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine so far, from /proc/stat."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_fraction(before: tuple[int, int], after: tuple[int, int]) -> float:
    """How busy every core of the machine was between two :func:`cpu_ticks` readings."""
    busy, total = after[0] - before[0], after[1] - before[1]
    return busy / total if total else 0.0
