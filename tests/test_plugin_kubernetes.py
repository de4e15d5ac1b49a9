"""The plugin's ``kubernetes`` target as a user meets it: its options, its scenarios, its refusals,
and the checks that read Docker objects skipped (never passed) for a gateway elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FLAGS = ("-p", "no:cacheprovider", "--openshell-engine=private", "--openshell-build=no")


def test_without_a_kube_config_the_target_is_a_usage_error_naming_the_fix(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    pytester.makepyfile("def test_x(openshell_gateway): pass")
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-gateway=kubernetes")
    assert result.ret != 0
    result.stdout.fnmatch_lines(
        ["*--openshell-gateway=kubernetes: no Kubernetes context: no kube config found*"]
    )


def test_a_kube_endpoint_that_is_not_host_and_port_is_refused(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(
        "--openshell-gateway=kubernetes", "--openshell-kube-endpoint=nohost", "-p", "no:cacheprovider"
    )  # fmt: skip
    assert result.ret != 0
    assert "--openshell-kube-endpoint takes HOST:PORT, not 'nohost'" in result.stderr.str()


def test_the_target_brings_its_scenarios_and_the_docker_ones_stay_listed_for_their_reasons(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    result = pytester.runpytest_subprocess(
        "--pyargs",
        "pytest_openshell.conformance",
        *FLAGS,
        "--openshell-gateway=kubernetes",
        "--openshell-scenarios=core",
        "--collect-only",
        "-q",
    )
    assert result.ret == 0, result.stdout.str()
    keys = set(re.findall(r"^openshell: scenario (\S+): ", result.stdout.str(), re.MULTILINE))
    assert {
        "pod-delete",
        "scale-to-zero",
        "statefulset-delete-keep-claim",
        "image-rollout",
        "sandbox-pod-delete",
    } <= keys
    assert "node-drain" not in keys  # not in the default set


ELSEWHERE = """
from pytest_openshell import GatewayHandle


class Elsewhere:
    platform = "kubernetes"

    def deploy(self, spec):
        raise AssertionError("never deployed")

    def start(self, gateway, *, image=None):
        raise AssertionError

    def stop(self, gateway):
        raise AssertionError

    def destroy(self, gateway):
        raise AssertionError


def pytest_openshell_gateway_driver(target):
    return Elsewhere() if target == "elsewhere" else None
"""


def test_a_check_marked_docker_is_skipped_with_the_reason_for_a_gateway_elsewhere(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(ELSEWHERE)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.openshell_docker
        def test_reads_docker(openshell):
            raise AssertionError("ran")

        def test_reads_nothing(openshell):
            pass
        """
    )
    result = pytester.runpytest_subprocess(*FLAGS, "--openshell-gateway=elsewhere", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "SKIPPED*this check reads Docker objects: its steps or traits are about Docker "
            "objects (containers, the daemon), and this gateway runs on kubernetes"
        ]
    )
