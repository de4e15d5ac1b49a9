"""The gateway's compute platform is declared, not assumed: outside the Docker compute driver
(``server/compute_docker.py``) no module of ``openshell_core.server`` names a Docker concept, and
outside the Kubernetes compute driver (``server/compute_kubernetes.py``) none names a Kubernetes
concept, in code, strings, comments or docstrings."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

from openshell_core.faults import Fault
from openshell_core.server import compute

SERVER = Path(compute.__file__).parent
DOCKER_DRIVER = SERVER / "compute_docker.py"
KUBERNETES_DRIVER = SERVER / "compute_kubernetes.py"
#: Docker's words. "engine" is ours for the Docker daemon; "ContainerSpec" is covered by
#: "container".
DOCKER_WORDS = re.compile(r"docker|container|volume|network|engine", re.IGNORECASE)
#: Kubernetes' words (its "container" and "volume" are Docker's too). A token's "claims" are
#: JWT's word, not a volume claim's: the plural counts only as "volume claims" or "PVCs".
KUBERNETES_WORDS = re.compile(
    r"kube|k8s|\bpods?\b|claim(?!s\b)|volume.?claims|\bpvcs?\b|namespace|crd|custom.?resource"
    r"|agent.?sandbox|statefulset",
    re.IGNORECASE,
)
#: What may still carry one of those words, and why.
ALLOWED = (
    # The fault catalogue's names re-create upstream reports; they are the user's words for them.
    *(fault.value for fault in Fault),
    *(fault.name for fault in Fault),
    # The compute driver registry names the one platform driver (its configuration name and
    # module are the only way to reach it).
    *compute.DRIVERS,
    *compute.DRIVERS.values(),
    "KUBERNETES_COMPUTE_DRIVER",
    # A column of the store on every existing gateway's disk: renaming it needs a migration.
    "container_env_json",
)


def docker_words(source: str, words: re.Pattern[str] = DOCKER_WORDS) -> list[str]:
    """Each token (name, string, comment) that names a Docker concept (or one of ``words``),
    allowed words removed."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in {tokenize.NAME, tokenize.STRING, tokenize.COMMENT}:
            continue
        text = token.string
        for allowed in sorted(ALLOWED, key=len, reverse=True):
            text = text.replace(allowed, "")
        if words.search(text):
            found.append(f"{token.start[0]}: {words.findall(text)} in {token.line.strip()}")
    return found


def test_no_server_module_but_the_platform_drivers_names_a_docker_concept() -> None:
    modules = sorted(p for p in SERVER.glob("*.py") if p not in {DOCKER_DRIVER, KUBERNETES_DRIVER})
    assert len(modules) > 10
    found = [f"{path.name}:{hit}" for path in modules for hit in docker_words(path.read_text())]
    assert not found, "\n".join(found)


def test_the_search_finds_docker_words_in_names_strings_and_comments() -> None:
    source = (
        "from openshell_core.engine import connect  # reach the daemon\n"
        'REASON = f"container was {state}"  # its Volume\n'
        "x = Fault.NO_WORKSPACE_VOLUME\n"
    )
    assert [hit.split(":")[0] for hit in docker_words(source)] == ["1", "2", "2"]


def test_no_server_module_but_the_kubernetes_driver_names_a_kubernetes_concept() -> None:
    modules = sorted(p for p in SERVER.glob("*.py") if p != KUBERNETES_DRIVER)
    assert len(modules) > 10
    found = [
        f"{path.name}:{hit}"
        for path in modules
        for hit in docker_words(path.read_text(), KUBERNETES_WORDS)
    ]
    assert not found, "\n".join(found)


def test_the_search_finds_kubernetes_words() -> None:
    source = 'CLAIM = "workspace"\n# the pod\'s PVC\napi = kube_config()\n'
    assert [hit.split(":")[0] for hit in docker_words(source, KUBERNETES_WORDS)] == [
        "1",
        "2",
        "3",
    ]
