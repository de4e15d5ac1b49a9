"""One run, several transports: how a scenario run is named and told apart per transport.

``--openshell-transport=nssh1,supervisor`` runs every scenario once per transport in one pytest
run. A scenario's parameter is then a :class:`ScenarioKey`: the scenario's key (it *is* that
string, so ``openshell.scenarios[request.param]`` keeps working) carrying the transport its
gateways are deployed with. Everything the run keeps per scenario run (test ids, artefacts, run
records, workload histories, xdist groups, the summary's rows) is keyed by :func:`scenario_id`:
the key alone when the run has one transport, so nothing changes for it, else ``key-transport``.
"""

from __future__ import annotations

from collections.abc import Sequence


def scenario_id(key: str, transport: str, transports: Sequence[str]) -> str:
    """How a run with ``transports`` names scenario ``key`` on ``transport``: ``kill`` when the
    run has one transport, ``kill-supervisor`` when it has several."""
    return str(key) if len(transports) <= 1 else f"{key}-{transport}"


class ScenarioKey(str):
    """A scenario key with the transport of its run, as a scenario fixture's ``request.param``.

    It equals the plain key (a lookup in ``openshell.scenarios`` finds the scenario), but two keys
    of different transports differ: pytest caches a parametrised fixture by its parameter, and the
    same scenario on another transport must be set up again.
    """

    transport: str
    #: the run's name for this scenario run (:func:`scenario_id`): its test id
    id: str

    def __new__(cls, key: str, transport: str, run_id: str | None = None) -> ScenarioKey:
        made = super().__new__(cls, key)
        made.transport = transport
        made.id = run_id or str(key)
        return made

    @property
    def key(self) -> str:
        """The plain scenario key."""
        return str.__str__(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ScenarioKey):
            return str.__eq__(self, other) and self.transport == other.transport
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return f"ScenarioKey({self.key!r}, {self.transport!r})"

    def __reduce__(self) -> tuple[type[ScenarioKey], tuple[str, str, str]]:
        return (ScenarioKey, (self.key, self.transport, self.id))
