"""Gateway names: the Docker object names, upstream's node name normalisation, and the refusal of
names that cannot be a hostname."""

from __future__ import annotations

import pytest

from openshell_core.errors import UsageError
from openshell_core.gateway.names import (
    HOSTNAME_MAX,
    MAX_NORMALISED_LENGTH,
    container_name,
    network_name,
    node_name,
    validate_name,
    volume_name,
)


def test_container_volume_and_network_share_the_cluster_name() -> None:
    assert container_name("demo") == "openshell-cluster-demo"
    assert volume_name("demo") == "openshell-cluster-demo"
    assert network_name("demo") == "openshell-cluster-demo"


def test_node_name_lowercases_and_joins_with_dashes() -> None:
    assert node_name("Prod_US") == "openshell-prod-us"


def test_node_name_collapses_runs_and_trims_dashes() -> None:
    assert node_name("._Prod..__-Gateway-.") == "openshell-prod-gateway"


def test_node_name_of_only_separators_falls_back_to_gateway() -> None:
    assert node_name("...___---") == "openshell-gateway"


def test_node_name_is_capped_at_253_characters() -> None:
    name = node_name("A" * 400)
    assert len(name) <= 253
    assert name.startswith("openshell-")
    assert name.endswith("a")


def test_node_name_of_the_default_gateway() -> None:
    assert node_name("openshell") == "openshell-openshell"
    assert node_name("e2e-resume") == "openshell-e2e-resume"


def test_node_name_turns_non_ascii_into_a_dash() -> None:
    assert node_name("café-prod") == "openshell-caf-prod"


def test_a_name_whose_node_name_fits_a_hostname_is_accepted() -> None:
    name = "a" * MAX_NORMALISED_LENGTH
    assert validate_name(name) == name
    assert len(node_name(name)) == HOSTNAME_MAX


def test_a_name_of_60_characters_is_refused_with_the_reason_and_the_limit() -> None:
    with pytest.raises(UsageError) as refused:
        validate_name("g" * 60)
    message = str(refused.value)
    assert "hostname" in message
    assert f"at most {HOSTNAME_MAX}" in message
    assert f"at most {MAX_NORMALISED_LENGTH} characters" in message


def test_one_character_over_the_limit_is_refused() -> None:
    with pytest.raises(UsageError, match="too long"):
        validate_name("a" * (MAX_NORMALISED_LENGTH + 1))


def test_separators_that_collapse_do_not_count_against_the_limit() -> None:
    name = "a" * (MAX_NORMALISED_LENGTH - 2) + "._-" + "b"
    assert len(name) > MAX_NORMALISED_LENGTH
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "-lead", ".hidden", "has space", "a/b", "ünï", "a:b"])
def test_names_docker_or_the_config_directory_cannot_take_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        validate_name(name)
