"""What a gateway remembers on its own volume: the image that last ran on it, the schema
version its store is at and the transport it speaks (``/var/lib/openshell/gateway.json``).

The reference gateway writes the record each time it has opened its store (so an image that
refuses the store never overwrites it); the host reads it before it makes a new container on the
volume. That is how a resume after the container was removed (a failed resume, ``docker rm``)
comes back on the image the gateway ran, and how an image too old for the store is refused
before a container is made. A gateway image says which store versions it opens with the image
label :data:`STORE_SCHEMA_LABEL`.

This module has no Docker dependency: the gateway server imports it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from openshell_core.wire import contract

RECORD_FILE: Final = contract.VOLUME_RECORD_FILE
IMAGE_ENV: Final = contract.GATEWAY_IMAGE_ENV
STORE_SCHEMA_LABEL: Final = contract.STORE_SCHEMA_LABEL
STORE_FILE: Final = contract.STORE_FILE
# Where SQLite keeps ``user_version`` (the store's schema version) in its header: 4 bytes,
# big-endian, at offset 60.
_SQLITE_HEADER: Final = b"SQLite format 3\x00"
_USER_VERSION: Final = slice(60, 64)


@dataclass(frozen=True)
class StateRecord:
    """The image that last opened the store on a gateway's volume, and the store's version then.

    ``image`` is empty when the container was made without :data:`IMAGE_ENV`.
    """

    image: str
    store_schema: int
    #: the transport the gateway was first deployed with (``""``: a volume from before gateways
    #: recorded one, which spoke :data:`~openshell_core.wire.contract.DEFAULT_TRANSPORT`)
    transport: str = ""

    def to_json(self) -> str:
        fields: dict[str, Any] = {"image": self.image, "store_schema": self.store_schema}
        if self.transport:
            fields["transport"] = self.transport
        return json.dumps(fields) + "\n"

    @classmethod
    def parse(cls, data: bytes) -> StateRecord | None:
        """The record in ``data``; None when it is not one (a torn or foreign file is ignored:
        the record is a convenience, the store's own check still guards the store)."""
        try:
            found: Any = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(found, dict):
            return None
        image, schema = found.get("image"), found.get("store_schema")
        if not isinstance(image, str) or not isinstance(schema, int) or isinstance(schema, bool):
            return None
        transport = found.get("transport", "")
        if not isinstance(transport, str):
            return None
        return cls(image=image, store_schema=schema, transport=transport)


def store_schema_of(data: bytes) -> int | None:
    """The schema version of a store file's contents (its header), for a volume that has no
    record (made before gateways wrote one); None when it is not an SQLite file of ours."""
    if not data.startswith(_SQLITE_HEADER) or len(data) < _USER_VERSION.stop:
        return None
    version = int.from_bytes(data[_USER_VERSION], "big")
    return version or None


def read_record(state_dir: Path) -> StateRecord | None:
    """The record in ``state_dir`` (None: none, or not one)."""
    try:
        return StateRecord.parse((state_dir / RECORD_FILE).read_bytes())
    except OSError:
        return None


def write_record(state_dir: Path, record: StateRecord) -> Path:
    """Write ``record`` atomically into ``state_dir``; returns its path."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / RECORD_FILE
    descriptor, temporary = tempfile.mkstemp(prefix=f".{RECORD_FILE}.", dir=state_dir)
    try:
        os.fchmod(descriptor, 0o644)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(record.to_json())
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def image_store_schema(image_labels: dict[str, str] | None) -> int | None:
    """The store version an image opens, from its labels; None when it does not say."""
    text = (image_labels or {}).get(STORE_SCHEMA_LABEL, "")
    return int(text) if text.isdigit() else None
