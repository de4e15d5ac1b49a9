"""Plugin overhead: one scenario driven through the plugin, and through a plain script doing the
same engine calls, each as a whole process (start to exit), in one run on one machine.

Both deploy a reference gateway, create a sandbox, run the ``kill`` scenario (``docker kill``, the
network removed, ``gateway start``), wait until the sandbox is Ready again, and destroy the gateway.
The plugin run adds what it does for every run: the lease, the sweep of dead runs, the image
check, the survival record, artefacts and the summary. A third run makes the plain script's calls
from a test under ``pytest -p no:openshell``: it splits the overhead into pytest's own start-up
and what the plugin adds to it.

Usage: python benchmarks/overhead.py [--repeat N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path

from _common import machine, median, run_process, summarise  # beside this script

PLUGIN_TEST = """
def test_kill(openshell_fresh_gateway, openshell_sandbox_factory, openshell_scenario):
    gateway = openshell_fresh_gateway
    openshell_sandbox_factory.create(gateway, "one")
    run = openshell_scenario.run(gateway)
    assert run.recovered, run.gave_up
    with openshell_scenario.session.client(gateway) as client:
        client.wait_ready("one", timeout=120)
"""

PLAIN_SCRIPT = """
import os, socket, sys, tempfile
from openshell_core.host.api_client import GatewayClient
from openshell_core.engine import open_engine
from openshell_core.gateway import DeployOptions, deploy, destroy, names

def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

def main():
    env = {"XDG_CONFIG_HOME": tempfile.mkdtemp()}
    name = "plain-" + os.urandom(3).hex()
    engine = open_engine("private")
    options = DeployOptions(name=name, port=free_port(), config_env=env, faults=frozenset())
    try:
        deploy(engine, options)
        with GatewayClient.for_gateway(name, env=env) as client:
            client.create_sandbox("one")
            client.wait_ready("one", timeout=120)
        engine.kill_container(names.container_name(name))
        network = names.network_name(name)
        for endpoint in (engine.inspect_network(network) or {}).get("Containers") or {}:
            engine.disconnect_network(network, endpoint)
        engine.remove_network(network)
        deploy(engine, DeployOptions(name=name, config_env=env, faults=frozenset()))
        with GatewayClient.for_gateway(name, env=env) as client:
            client.wait_ready("one", timeout=120)
    finally:
        destroy(engine, name, env=env)

if __name__ == "__main__":
    main()
"""

# The plain script's calls as a test, run with the plugin disabled: pytest's own share.
PLAIN_TEST = """
from plain import main

def test_kill_without_the_plugin():
    main()
"""


def run(command: list[str], cwd: Path) -> float:
    return run_process(command, cwd)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="osbench-overhead-") as work:
        cwd = Path(work)
        (cwd / "test_kill.py").write_text(textwrap.dedent(PLUGIN_TEST))
        (cwd / "plain.py").write_text(textwrap.dedent(PLAIN_SCRIPT))
        (cwd / "test_plain.py").write_text(textwrap.dedent(PLAIN_TEST))
        plugin_cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--openshell-gateway",
            "--openshell-engine=private", "--openshell-scenarios=kill", "test_kill.py",
        ]  # fmt: skip
        plain_cmd = [sys.executable, "plain.py"]
        bare_pytest_cmd = [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:openshell",
            "test_plain.py",
        ]  # fmt: skip
        for command in (plain_cmd, bare_pytest_cmd, plugin_cmd):
            run(command, cwd)  # warm every path once (page cache, images)
        plugin, plain, bare_pytest = [], [], []
        for _ in range(args.repeat):
            plain.append(run(plain_cmd, cwd))
            bare_pytest.append(run(bare_pytest_cmd, cwd))
            plugin.append(run(plugin_cmd, cwd))
    ratio = median(plugin) / median(plain)
    pytest_share = median(bare_pytest) / median(plain)
    plugin_share = median(plugin) / median(bare_pytest)
    print(f"machine: {machine()}")
    print(f"repeats: {args.repeat} (min / median / max seconds, whole process)\n")
    print("| kill scenario, deploy to destroy | seconds |\n|---|---|")
    print(f"| plain script (the same engine calls) | {summarise(plain)} |")
    print(f"| the same calls in a test, `pytest -p no:openshell` | {summarise(bare_pytest)} |")
    print(f"| through the plugin (`pytest --openshell-gateway`) | {summarise(plugin)} |")
    verdict = "met" if ratio <= 1.1 else "missed"
    print(f"| overhead: plugin / plain script (median; target <= 1.1x) | {ratio:.2f}x, {verdict} |")
    print(f"| of which pytest alone: no-plugin test / plain script | {pytest_share:.2f}x |")
    print(f"| of which the plugin: plugin / no-plugin test | {plugin_share:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
