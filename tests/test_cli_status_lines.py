"""The CLI's progress lines on stderr: ``[status] ...``, and on a terminal each line returns to
column 0 (``ssh-proxy`` writes them into a terminal an ssh session has put in raw mode)."""

from __future__ import annotations

import io
import logging

from openshell_core.cli import _status_handler


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _emit(stream: io.StringIO, message: str, level: int = logging.INFO) -> str:
    record = logging.LogRecord("openshell.test", level, __file__, 1, message, None, None)
    _status_handler(stream).handle(record)
    return stream.getvalue()


def test_a_progress_line_on_a_terminal_ends_with_carriage_return_and_newline() -> None:
    assert _emit(_Terminal(), "tunnel resumed") == "[status] tunnel resumed\r\n"


def test_every_line_of_a_multi_line_warning_on_a_terminal_returns_to_column_zero() -> None:
    written = _emit(_Terminal(), "broke\nreconnecting", logging.WARNING)
    assert written == "[warning] broke\r\nreconnecting\r\n"


def test_a_progress_line_into_a_file_or_pipe_ends_with_a_plain_newline() -> None:
    assert _emit(io.StringIO(), "tunnel resumed") == "[status] tunnel resumed\n"
