"""The conformance suite: what ``pytest --openshell-gateway`` proves about a gateway."""
