"""What runs on the user's machine beside the CLI: the gateway API client (:mod:`.api_client`),
the host-side metadata and mTLS files (:mod:`.metadata`) and ``ssh-proxy`` (:mod:`.sshproxy`).

Nothing here imports the server or the sandbox; ``ssh-proxy`` loads neither Docker's nor gRPC's
client (tests/test_package_layering.py).
"""
