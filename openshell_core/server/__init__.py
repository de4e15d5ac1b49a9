"""The reference gateway that runs inside the gateway image (``python3 -m openshell_core.server``).

Modules, one responsibility each: :mod:`.config` (environment -> :class:`ServerConfig`),
:mod:`.store` (SQLite in the state directory, schema versions, migrations), :mod:`.secrets`
(handshake secret and PKI, reconciled at start), :mod:`.compute` (the compute driver protocol:
where sandboxes run; :mod:`.compute_docker` is the one platform driver, the only module that knows
its platform, and :mod:`.compute_memory` the in-memory one for tests), :mod:`.sandboxes` (the
lifecycle of one sandbox), :mod:`.reconciler` (startup adoption and the periodic pass),
:mod:`.api` (the gRPC servicer), :mod:`.sessions` (where SSH tunnels go), :mod:`.front` (the one
TLS port: gRPC or CONNECT), :mod:`.healthcheck` (the image's HEALTHCHECK).

Fault switches (a testing aid, off by default; ``OPENSHELL_FAULTS`` read at gateway start) that
live in the server, each re-creating one upstream failure:

``regenerate-handshake-secret``
    a new handshake secret at every start; sandboxes keep the one frozen into their environment,
    so every tunnel and exec into an older sandbox is rejected by its supervisor.
``container-id-hostname``
    the node identity is the gateway's hostname (a generated id when the deploy does not pin
    it), and at start the sandboxes labelled with another node name are purged with their
    workspaces as a stale node's, as upstream's stale-node cleanup did.
``no-workspace-volume``
    no persistent workspace and no seeding: ``/sandbox`` goes whenever the sandbox's runtime is
    made again.
``reseed-workspace``
    the workspace is seeded without the sentinel whenever the gateway starts a sandbox (and at
    gateway start), overwriting what the user changed.
``rotate-pki-on-resume``
    new certificates at every start, whatever is in the state directory.
``forget-sandboxes-on-start``
    the store is kept out of the state directory and dropped at every start.
``relabel-on-upgrade``
    (``v2`` image only) the ownership label is derived from the node name instead of the gateway
    name; at start, sandboxes under the old label look foreign and are purged, records included.
``error-is-terminal``
    a sandbox whose runtime stopped behind the gateway's back is marked ERROR for good instead
    of being started again.
``error-refuses-stop``
    stop and start of a sandbox in ERROR are refused (``FAILED_PRECONDITION``, "delete it and
    create a new one"), so its workspace is out of the user's reach.
``no-command-replay``
    the sandbox's own command is left out of its runtime's environment and run once, detached,
    after the sandbox is first Ready; a runtime that starts again runs its supervisor alone.
``regenerate-token-key``
    a new sandbox-token signing key at every start: every supervisor's token stops verifying.
"""
