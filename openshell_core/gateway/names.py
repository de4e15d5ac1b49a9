"""Gateway names and the names derived from them.

A gateway called ``{name}`` owns a container, a volume and a network, all named
``openshell-cluster-{name}``, and a node identity :func:`node_name` that becomes the container's
hostname (and ``OPENSHELL_NODE_NAME``). :func:`validate_name` refuses, before anything touches
Docker, every name that could not produce all of these.
"""

from __future__ import annotations

import re
from typing import Final

from openshell_core.errors import UsageError
from openshell_core.wire import contract

#: The gateway name upstream's CLI uses when none is given.
DEFAULT_GATEWAY_NAME: Final = "openshell"
OBJECT_PREFIX: Final = contract.GATEWAY_OBJECT_PREFIX
NODE_PREFIX: Final = "openshell-"
#: Upstream's node name normalisation: the suffix when nothing usable is left, and the cap.
NODE_FALLBACK: Final = "gateway"
NODE_NAME_LIMIT: Final = 253
#: The node name is the container's hostname. Linux allows 64 bytes (HOST_NAME_MAX); a DNS label,
#: which a hostname must also be to resolve, at most 63 characters. We hold it to the stricter one.
HOSTNAME_MAX: Final = 63
#: The longest normalised name that fits: the hostname limit less the node prefix.
MAX_NORMALISED_LENGTH: Final = HOSTNAME_MAX - len(NODE_PREFIX)

#: Docker accepts ``[a-zA-Z0-9][a-zA-Z0-9_.-]*`` for container and volume names; the name is also a
#: directory under ``$XDG_CONFIG_HOME/openshell/gateways``, so no ``/`` and no leading dot.
_VALID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: The rule :data:`_VALID` enforces, as users read it.
NAME_RULE: Final = (
    "a gateway name has at least one character, only letters, digits, '.', '_' and '-', and "
    "starts with a letter or digit"
)


def container_name(name: str) -> str:
    """The gateway container's name."""
    return OBJECT_PREFIX + name


def volume_name(name: str) -> str:
    """The gateway volume's name: the gateway's whole state lives on it."""
    return OBJECT_PREFIX + name


def network_name(name: str) -> str:
    """The gateway network's name: the gateway and its sandboxes join it."""
    return OBJECT_PREFIX + name


def node_name(name: str) -> str:
    """The gateway's node identity: ``openshell-`` plus ``name`` normalised as upstream does.

    ASCII letters and digits are kept (lowercased); every run of anything else becomes one ``-``;
    leading and trailing ``-`` go; an empty result becomes ``gateway``; the whole is capped at 253
    characters. This is also the container's hostname, so a gateway name is only accepted when the
    result fits a hostname (:func:`validate_name`).
    """
    parts: list[str] = []
    dash_pending = False
    for char in name:
        if char.isascii() and char.isalnum():
            if dash_pending and parts:
                parts.append("-")
            dash_pending = False
            parts.append(char.lower())
        else:
            dash_pending = True
    suffix = "".join(parts)
    room = NODE_NAME_LIMIT - len(NODE_PREFIX)
    if len(suffix) > room:
        suffix = suffix[:room].rstrip("-")
    return NODE_PREFIX + (suffix or NODE_FALLBACK)


def validate_name(name: str) -> str:
    """Return ``name`` when it can name a gateway; raise :class:`UsageError` saying why not.

    :raises UsageError: for an empty name, characters Docker or the host-side directory cannot
        take, or a name whose node name would not fit a hostname.
    """
    if not name:
        raise UsageError(
            f"the gateway name is empty: {NAME_RULE}",
            hint=(
                f"pass a name, e.g. --name {DEFAULT_GATEWAY_NAME}, "
                "or leave out --name for the default"
            ),
        )
    if not _VALID.fullmatch(name):
        raise UsageError(
            f"gateway name {name!r} is not usable: {NAME_RULE}",
            hint=f"it names the Docker objects {OBJECT_PREFIX}{{name}} and a directory",
        )
    node = node_name(name)
    if len(node) > HOSTNAME_MAX:
        raise UsageError(
            f"gateway name {name!r} is too long: its node name {node!r} has {len(node)} "
            f"characters, and the node name is the gateway container's hostname, which may have "
            f"at most {HOSTNAME_MAX} (a DNS label; Linux allows 64 bytes)",
            hint=f"use a gateway name of at most {MAX_NORMALISED_LENGTH} characters (counted "
            "after lowercasing and turning each run of '.', '_' and '-' into one '-')",
        )
    return name
