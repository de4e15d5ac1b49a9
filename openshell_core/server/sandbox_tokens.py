"""Sandbox tokens: the gateway-signed identity a supervisor presents on the supervisor-side RPCs.

A token is a compact JWT (HS256) bound to one sandbox id: ``sub`` the sandbox id, ``iat``,
``exp`` (0: it never expires, the local default) and a random ``jti``. It is signed with the
gateway's sandbox-token key, made once and kept with the gateway's state beside the handshake secret
(:func:`openshell_core.server.secrets.reconcile_token_key`): a new key would make every running
supervisor's token worthless. Only ``ConnectSupervisor``, ``RelayStream``, ``IssueSandboxToken``
and ``RefreshSandboxToken`` accept one; no user-facing call does. Tokens are never logged.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Final

from openshell_core.errors import OpenShellError

#: ``typ`` of our tokens, so that no other JWT signed with the same algorithm passes.
TOKEN_TYPE: Final = "openshell-sandbox+jwt"
_HEADER: Final = {"alg": "HS256", "typ": TOKEN_TYPE}
#: The metadata key a supervisor sends its token in (``Bearer {token}``).
AUTHORIZATION_METADATA: Final = "authorization"
_BEARER: Final = "Bearer "


class TokenProblem(enum.Enum):
    """Why a token was refused (words for logs; the token itself never is)."""

    MISSING = "no sandbox token"
    MALFORMED = "malformed sandbox token"
    BAD_SIGNATURE = "sandbox token not signed by this gateway"
    EXPIRED = "sandbox token expired"
    OTHER_SANDBOX = "sandbox token is for another sandbox"


class TokenRefused(OpenShellError):
    """A sandbox token did not verify; :attr:`problem` says why."""

    def __init__(self, problem: TokenProblem) -> None:
        self.problem = problem
        super().__init__(problem.value)


@dataclass(frozen=True)
class SandboxToken:
    """A verified (or freshly issued) token's claims; ``expires_at`` 0 means never."""

    sandbox_id: str
    issued_at: float
    expires_at: float
    token: str = field(repr=False, default="")


class TokenSigner:
    """Issues and verifies sandbox tokens with one key; ``ttl`` seconds of life (0: forever)."""

    def __init__(self, key: bytes, *, ttl: float = 0.0) -> None:
        if len(key) < 32:
            raise ValueError("a sandbox-token key has at least 32 bytes")
        self._key = key
        self.ttl = max(0.0, ttl)

    def issue(self, sandbox_id: str, *, now: float | None = None) -> SandboxToken:
        issued = int(time.time() if now is None else now)
        expires = issued + int(self.ttl) if self.ttl > 0 else 0
        claims = {"sub": sandbox_id, "iat": issued, "exp": expires, "jti": secrets.token_hex(8)}
        signing_input = (
            _b64(json.dumps(_HEADER, separators=(",", ":")).encode())
            + "."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        token = signing_input + "." + _b64(self._mac(signing_input))
        return SandboxToken(sandbox_id, float(issued), float(expires), token)

    def verify(
        self,
        token: str,
        *,
        sandbox_id: str | None = None,
        now: float | None = None,
        allow_expired: bool = False,
    ) -> SandboxToken:
        """The token's claims, when this key signed it, it has not expired, and (when given) it
        is ``sandbox_id``'s.

        :raises TokenRefused: otherwise.
        """
        if not token:
            raise TokenRefused(TokenProblem.MISSING)
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenRefused(TokenProblem.MALFORMED)
        signing_input = parts[0] + "." + parts[1]
        try:
            signature = _unb64(parts[2])
            header: Any = json.loads(_unb64(parts[0]))
            claims: Any = json.loads(_unb64(parts[1]))
        except (ValueError, binascii.Error):
            raise TokenRefused(TokenProblem.MALFORMED) from None
        if not hmac.compare_digest(signature, self._mac(signing_input)):
            raise TokenRefused(TokenProblem.BAD_SIGNATURE)
        if header != _HEADER or not isinstance(claims, dict):
            raise TokenRefused(TokenProblem.MALFORMED)
        subject, issued, expires = claims.get("sub"), claims.get("iat"), claims.get("exp")
        if not isinstance(subject, str) or not isinstance(expires, int):
            raise TokenRefused(TokenProblem.MALFORMED)
        if not isinstance(issued, int):
            raise TokenRefused(TokenProblem.MALFORMED)
        moment = time.time() if now is None else now
        if expires and moment >= expires and not allow_expired:
            raise TokenRefused(TokenProblem.EXPIRED)
        if sandbox_id is not None and subject != sandbox_id:
            raise TokenRefused(TokenProblem.OTHER_SANDBOX)
        return SandboxToken(subject, float(issued), float(expires), token)

    def _mac(self, signing_input: str) -> bytes:
        return hmac.new(self._key, signing_input.encode("ascii"), hashlib.sha256).digest()


def bearer(token: str) -> str:
    """The ``authorization`` metadata value carrying ``token``."""
    return _BEARER + token


def token_of(metadata: Any) -> str:
    """The bearer token in gRPC invocation metadata (``""`` when there is none)."""
    for key, value in metadata or ():
        if key == AUTHORIZATION_METADATA and isinstance(value, str) and value.startswith(_BEARER):
            return value[len(_BEARER) :].strip()
    return ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
