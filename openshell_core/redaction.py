"""Keeping secrets out of what is written down: failure artefacts, reports, log lines.

Redaction happens where text is captured, before it is kept anywhere. What counts as secret is
listed once, here: the names that carry a secret (environment variables, files, headers, command
line options) and the shapes of secret values (PEM private-key blocks). A :class:`Redactor` also
learns the values it meets under those names (a sandbox's handshake secret in its ``docker
inspect``, the session tokens a run makes) and replaces them wherever they turn up again, quoted or
cut out of their context.
"""

from __future__ import annotations

import dataclasses
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from openshell_core.wire import contract

#: What a secret is replaced with.
MASK: Final = "[REDACTED]"

#: Environment variables whose value is a secret (the sandbox's handshake secret, its SSH host key).
SECRET_ENV_NAMES: Final = frozenset(contract.SECRET_ENV_NAMES)
#: Files that hold a private key or secret: the gateway's PKI keys and handshake secret (the
#: contract's list), the client's mTLS key and a run's SSH key (host-side only).
SECRET_FILE_NAMES: Final = frozenset(
    {*(Path(name).name for name in contract.SECRET_FILE_NAMES), "tls.key", "id_ed25519"}
)
#: Headers whose value is a credential (the tunnel's session token).
SECRET_HEADER_NAMES: Final = frozenset({contract.TOKEN_HEADER.lower()})
#: Command-line options whose value is a credential (``ssh-proxy --token=...``).
SECRET_OPTION_NAMES: Final = frozenset({"--token"})
#: Every name above that may stand before a secret value in text.
SECRET_NAMES: Final = SECRET_ENV_NAMES | SECRET_HEADER_NAMES | SECRET_OPTION_NAMES

#: Learned values shorter than this are not secrets worth hunting (and would mask common words).
MIN_SECRET_LENGTH: Final = 12

# A private key in PEM: its BEGIN line, its body (base64, whitespace, or "\n" escaped as in JSON
# and Python reprs, "E   " prefixes of a pytest report included), and its END line when it is there:
# a key cut short (a log tail, a truncated repr) loses what remains of its body too.
_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:[A-Za-z0-9+/=\s]|\\[nrt])*"
    r"(?:-----END [A-Z0-9 ]*PRIVATE KEY-----)?"
)
# ``NAME=value``, ``NAME: value``, ``"NAME": "value"``, ``'NAME': 'value'``, case-insensitive
# (headers are). The value ends at whitespace, a quote or a backslash (an escaped quote in JSON).
_ASSIGNED = re.compile(
    r"(?<![A-Za-z0-9_-])(?P<name>"
    + "|".join(re.escape(name) for name in sorted(SECRET_NAMES, key=len, reverse=True))
    + r")(?P<separator>[\"']?[ \t]*[=:][ \t]*[\"']?)(?P<value>[^\s\"'\\]+)",
    re.IGNORECASE,
)

T = TypeVar("T")


def is_secret_name(name: str) -> bool:
    """Whether ``name`` (an environment variable, header or option) carries a secret."""
    return name.lower() in {known.lower() for known in SECRET_NAMES}


class Redactor:
    """Replaces secrets in text and in JSON-like values; remembers the secret values it is told
    or finds, to replace them wherever they appear later. Safe to share between threads."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._known: frozenset[str] = frozenset()
        self._pattern: re.Pattern[str] | None = None
        for value in known:
            self.learn(value)

    @property
    def known(self) -> frozenset[str]:
        return self._known

    def learn(self, value: str) -> None:
        """Remember a secret value; a private key is remembered line by line too, so that a piece
        of one found without its BEGIN line is masked all the same."""
        pieces = {value.strip()}
        if "PRIVATE KEY-----" in value:
            pieces |= {line.strip() for line in value.splitlines() if "-----" not in line}
        pieces = {piece for piece in pieces if len(piece) >= MIN_SECRET_LENGTH}
        with self._lock:
            if pieces <= self._known:
                return
            self._known = self._known | pieces
            alternatives = sorted(self._known, key=len, reverse=True)  # longest first
            self._pattern = re.compile("|".join(re.escape(piece) for piece in alternatives))

    def learn_environment(self, variables: Iterable[str] | Mapping[str, str]) -> None:
        """Remember the values of the secret-bearing variables among ``variables`` (``KEY=value``
        strings, as ``docker inspect`` lists them, or a mapping)."""
        pairs = (
            variables.items()
            if isinstance(variables, Mapping)
            else (item.partition("=")[::2] for item in variables)
        )
        for name, value in pairs:
            if name in SECRET_ENV_NAMES and value:
                self.learn(value)

    def learn_files(self, directory: Path) -> None:
        """Remember the content of every secret-bearing file under ``directory``."""
        if not directory.is_dir():
            return
        for path in directory.rglob("*"):
            if path.name in SECRET_FILE_NAMES and path.is_file():
                try:
                    self.learn(path.read_text(errors="replace"))
                except OSError:
                    continue

    def learn_container(self, inspected: Mapping[str, object]) -> None:
        """Remember the secrets in a container's environment (from its ``docker inspect``)."""
        config = inspected.get("Config")
        if isinstance(config, Mapping):
            variables = config.get("Env")
            if isinstance(variables, list):
                self.learn_environment(str(item) for item in variables)

    def text(self, text: str) -> str:
        """``text`` with every private key, every value of a secret-bearing name and every known
        secret replaced by :data:`MASK`."""
        text = _PEM.sub(MASK, text)
        text = _ASSIGNED.sub(lambda found: found["name"] + found["separator"] + MASK, text)
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text

    def value(self, value: T) -> T:
        """A copy of a JSON-like ``value`` (dicts, lists, tuples, strings) with its strings
        redacted; the value of a key that names a secret is masked whole."""
        return self._value(value)  # type: ignore[return-value]

    def _value(self, value: object) -> object:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, Mapping):
            return {
                key: MASK if isinstance(key, str) and is_secret_name(key) else self._value(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self._value(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._value(item) for item in value)
        return value

    def in_place(self, target: T) -> T:
        """Redact the strings of ``target`` and of everything it holds, in place: the fields of
        dataclasses (a pytest report's ``longrepr``), lists, dicts. Strings and tuples cannot
        change: the redacted copy is returned (``target`` itself otherwise)."""
        return self._in_place(target, set())  # type: ignore[return-value]

    def _in_place(self, target: object, seen: set[int]) -> object:
        if isinstance(target, str):
            return self.text(target)
        if id(target) in seen:
            return target
        seen.add(id(target))
        if isinstance(target, list):
            target[:] = [self._in_place(item, seen) for item in target]
        elif isinstance(target, dict):
            for key in list(target):
                target[key] = self._in_place(target[key], seen)
        elif isinstance(target, tuple):
            items = [self._in_place(item, seen) for item in target]
            if hasattr(target, "_fields"):  # a named tuple takes its fields one by one
                named: Any = type(target)
                return named(*items)
            return tuple(items)
        elif dataclasses.is_dataclass(target) and not isinstance(target, type):
            for found in dataclasses.fields(target):
                current = getattr(target, found.name, None)
                object.__setattr__(target, found.name, self._in_place(current, seen))
        return target
