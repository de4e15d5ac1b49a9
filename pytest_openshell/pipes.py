"""Reading a child process's pipe in a thread, without racing whoever closes it.

The reader thread is the only one that reads or closes its pipe: :meth:`PipeReader.stop` wakes it
through a pipe of its own instead of closing the stream under it (a read on a stream closed by
another thread raises in the thread, and pytest reports that against whichever test runs then).
The reader never raises: an error ends it and is kept in :attr:`PipeReader.error`.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable
from typing import IO

CHUNK = 65536


class PipeReader:
    """Hands each chunk read from ``stream`` to ``on_chunk`` until end of file or :meth:`stop`;
    then calls ``on_end`` (from the reader thread; an error in it is kept like any other)."""

    def __init__(
        self,
        stream: IO[bytes],
        on_chunk: Callable[[bytes], None],
        *,
        name: str,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._stream = stream
        self._on_chunk = on_chunk
        self._on_end = on_end
        self._wake_read, self._wake_write = os.pipe()
        self._wake_lock = threading.Lock()
        #: what ended the reader other than end of file or stop(); None when nothing did
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for end of file; whether the reader has ended."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        """End the reader now (even while a grandchild keeps the pipe open) and close the pipe."""
        with self._wake_lock:
            if self._wake_write >= 0:
                # The reader may have ended and closed its end already: nothing to wake then.
                with contextlib.suppress(OSError):
                    os.write(self._wake_write, b"x")
                os.close(self._wake_write)
                self._wake_write = -1
        self._thread.join(timeout)

    def _run(self) -> None:
        try:
            self._read()
            if self._on_end is not None:
                self._on_end()
        except BaseException as exc:  # kept for the owner: never raised in this thread
            self.error = exc
        finally:
            with contextlib.suppress(OSError):
                self._stream.close()
            os.close(self._wake_read)

    def _read(self) -> None:
        fd = self._stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_read, select.POLLIN)
        while True:
            ready = {ready_fd for ready_fd, _ in poller.poll()}
            if self._wake_read in ready:
                return
            chunk = os.read(fd, CHUNK)
            if not chunk:
                return
            self._on_chunk(chunk)
