"""Names of users, for errors that tell a user whose file they may not use."""

from __future__ import annotations

import os
import pwd
from pathlib import Path


def user_name(uid: int) -> str:
    """``root``, ``alice``; ``uid 1234`` for a user without a name."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def owner_of(path: Path) -> str:
    """The name of the user who owns ``path`` (or of its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return user_name(candidate.stat().st_uid)
        except OSError:
            continue
    return "another user"


def this_user() -> str:
    return user_name(os.geteuid())
