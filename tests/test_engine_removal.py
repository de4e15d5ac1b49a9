"""Removing a container another client is removing already: the logic only (the race itself is a
moment too short to create on purpose against a real engine)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests

from openshell_core.engine.docker_api import Engine
from openshell_core.errors import EngineError


class _Api:
    """Answers remove_container with Docker's 409 for a removal in progress, and inspect with the
    container until it has been asked ``gone_after`` times."""

    def __init__(self, conflict: str, gone_after: int) -> None:
        self.conflict = conflict
        self.gone_after = gone_after
        self.inspections = 0

    def remove_container(self, name: str, **_: Any) -> None:
        response = requests.Response()
        response.status_code = 409
        raise docker.errors.APIError("conflict", response=response, explanation=self.conflict)

    def inspect_container(self, name: str) -> dict[str, Any]:
        self.inspections += 1
        if self.inspections > self.gone_after:
            response = requests.Response()
            response.status_code = 404
            raise docker.errors.NotFound("gone", response=response, explanation="No such container")
        return {"Id": name}


def _engine(api: _Api) -> Engine:
    return Engine(client=SimpleNamespace(api=api), host="unix:///stub", source="stub")  # type: ignore[arg-type]


def test_a_removal_already_in_progress_is_waited_for_not_reported_as_a_failure() -> None:
    api = _Api("removal of container c1 is already in progress", gone_after=2)

    assert _engine(api).remove_container("c1") is True
    assert api.inspections == 3


def test_any_other_conflict_on_removal_is_still_an_error() -> None:
    api = _Api("You cannot remove a running container c1", gone_after=0)

    with pytest.raises(EngineError, match="remove container c1 failed"):
        _engine(api).remove_container("c1")
