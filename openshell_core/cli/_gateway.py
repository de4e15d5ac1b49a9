"""``gateway`` commands."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add this group's commands to the top-level parser (none yet)."""
