"""Every byte format two sides share: the contract (names, paths, env variables), the NSSH1
preface, the sandbox port's modes (EXEC1, OSRS1) on one frame header, and the relay pumps.

Standard library only, and nothing of :mod:`openshell_core` but this package and
:mod:`openshell_core.errors`: the sandbox image installs the wheel without dependencies, and
``ssh-proxy`` must start without Docker's or gRPC's client.
"""
