"""Property 5: the handshake secret and every certificate are unchanged; the host-side mTLS files
still authenticate."""

from __future__ import annotations

import pytest

from openshell_core.host.api_client import GatewayClient
from pytest_openshell import Ability

from ._support import SETTLED, SURVIVING, Outcome, check_state_digests, eventually

pytestmark = [pytest.mark.openshell_property(number=5), pytest.mark.openshell_traits(SURVIVING)]


@pytest.mark.openshell_abilities(Ability.STATE_DIGESTS)
def test_the_handshake_secret_and_the_pki_are_unchanged(lifecycle: Outcome) -> None:
    lifecycle.require_recovered()
    check_state_digests(lifecycle)


def test_the_gateway_presents_the_same_server_certificate(lifecycle: Outcome) -> None:
    lifecycle.verify("server certificate", within=SETTLED)


def test_the_host_mtls_files_are_unchanged_and_still_authenticate(lifecycle: Outcome) -> None:
    lifecycle.verify("host mTLS files", within=SETTLED)
    old = lifecycle.workload.old_mtls
    assert old is not None

    def health() -> str:
        with GatewayClient(
            lifecycle.gateway.endpoint,
            ca=old.ca_cert.read_bytes(),
            cert=old.cert.read_bytes(),
            key=old.key.read_bytes(),
            timeout=5,
        ) as client:
            return client.health()

    # The gateway answers with the current files already: the old ones either work or never will.
    eventually(health, timeout=SETTLED, what="health with the mTLS files from before")
