"""The conformance suite: what ``pytest --openshell-gateway`` proves about a gateway.

Run it from a clone with ``pytest conformance --openshell-gateway``, or after
``pip install pytest-openshell`` with ``pytest --pyargs pytest_openshell.conformance
--openshell-gateway``. Each module checks one family of the properties of docs/conformance.md after
every scenario whose traits it applies to; test ids name the scenario.
"""
