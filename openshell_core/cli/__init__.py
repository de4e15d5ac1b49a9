"""The ``pytest-openshell`` command line.

``main(argv)`` parses, runs one command and returns an exit code; only :func:`entrypoint` exits.
Library errors are reported here, once, as an ``error:`` line and a ``hint:`` line.

Exit codes (scripts may rely on them):

====  ==========================================================================
0     success
1     the operation failed (engine error, readiness timeout, build failure, ...)
2     bad usage (unknown option, invalid name or value)
3     no usable Docker engine, or this machine lacks what a private engine needs
4     state that needs a decision, nothing changed (``gateway status``: not running, not ours)
====  ==========================================================================
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from openshell_core.cli import _ssh_proxy
from openshell_core.errors import (
    EnginePrerequisiteError,
    NoEngineError,
    OpenShellError,
    PermissionDeniedError,
    StateError,
    UsageError,
)
from openshell_core.users import owner_of, this_user

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_ENGINE = 3
EXIT_STATE = 4

PROG = "pytest-openshell"


class _StatusFormatter(logging.Formatter):
    """Progress lines the way upstream's CLI prints them: ``[status] ...`` on stderr.

    ``line_end``: ``"\r\n"`` on a terminal. ``ssh-proxy`` shares its terminal with an ssh session
    that has put it in raw mode, where a bare newline moves down without returning to column 0.
    """

    def __init__(self, line_end: str = "\n") -> None:
        super().__init__()
        self.line_end = line_end

    def format(self, record: logging.LogRecord) -> str:
        tag = "status" if record.levelno <= logging.INFO else record.levelname.lower()
        return f"[{tag}] {record.getMessage()}".replace("\n", self.line_end)


def _status_handler(stream: TextIO) -> logging.Handler:
    """Where progress lines go: ``stream``, with line ends its terminal shows right."""
    handler = logging.StreamHandler(stream)
    line_end = "\r\n" if stream.isatty() else "\n"
    handler.terminator = line_end
    handler.setFormatter(_StatusFormatter(line_end))
    return handler


def build_parser(*, light: bool = False) -> argparse.ArgumentParser:
    """The command line's parser. ``light``: ``ssh-proxy`` alone, without importing the other
    commands (Docker's client, gRPC): ssh starts ``ssh-proxy`` for every connection."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Drive OpenShell gateways on Docker, and the engine and images they run on.",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print no progress lines")
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if light:
        _ssh_proxy.register(commands)
        return parser
    from openshell_core.cli import _engine, _gateway, _kube, _sandbox  # noqa: PLC0415 (``light``)

    _engine.register(commands)
    _gateway.register(commands)
    _kube.register(commands)
    _sandbox.register(commands)
    _ssh_proxy.register(commands)
    return parser


def _split_remote_command(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """``sandbox exec NAME [options] -- COMMAND``: options before ``--`` are ours, even after NAME
    (argparse's remainder would hand ``--gateway X`` to the remote command), the rest is the
    command's."""
    if argv[:1] != ["sandbox"] or "--" not in argv:
        return argv, None
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


class _VersionAction(argparse.Action):
    """``--version``, looked up only when asked for (see :func:`_version`)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"{parser.prog} {_version()}")
        parser.exit()


def _version() -> str:
    import importlib.metadata  # noqa: PLC0415 (about 40 ms, paid by every ``ssh-proxy`` otherwise)

    try:
        return importlib.metadata.version("pytest-openshell")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 (one return per error family)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(light=argv[:1] == ["ssh-proxy"])
    argv, command = _split_remote_command(argv)
    try:
        args = parser.parse_args(argv)
        if command is not None and getattr(args, "argv", None) and args.argv[0].startswith("-"):
            # ``NAME --gateway X -- CMD``: the options after NAME are ours, not the command's;
            # parsed again with NAME after them (a remainder takes all that follows NAME).
            cut = len(argv) - len(args.argv)
            args = parser.parse_args([*argv[: cut - 1], *args.argv, argv[cut - 1]])
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return int(exc.code or 0)
    if command is not None:
        if not hasattr(args, "argv"):
            parser.print_usage(sys.stderr)
            print(f"{parser.prog}: error: `--` starts a remote command: only for sandbox "
                  "exec and sandbox connect", file=sys.stderr)  # fmt: skip
            return EXIT_USAGE
        args.argv = [*(a for a in args.argv if a != "--"), *command]
    handler = _status_handler(sys.stderr)
    root = logging.getLogger("openshell")
    root.addHandler(handler)
    root.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        return int(args.run(args))
    except UsageError as exc:
        _report(exc)
        return EXIT_USAGE
    except (NoEngineError, EnginePrerequisiteError) as exc:
        _report(exc)
        return EXIT_NO_ENGINE
    except StateError as exc:
        _report(exc)
        return EXIT_STATE
    except OpenShellError as exc:
        _report(exc)
        return EXIT_FAILED
    except PermissionError as exc:  # a file of another user's that no narrower check names
        _report(_denied(exc))
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        root.removeHandler(handler)


def _denied(exc: PermissionError) -> PermissionDeniedError:
    path = Path(exc.filename) if exc.filename else Path.cwd()
    return PermissionDeniedError(
        f"permission denied: {path} belongs to {owner_of(path)}, and this user "
        f"({this_user()}) may not use it",
        hint="run as root or as the user who started the engine and the gateways, or set "
        "DOCKER_HOST and XDG_CONFIG_HOME to ones of your own",
    )


def _report(exc: OpenShellError) -> None:
    print(f"error: {exc.message}", file=sys.stderr)
    if exc.hint:
        print(f"  hint: {exc.hint}", file=sys.stderr)


def entrypoint() -> None:
    """The console script."""
    sys.exit(main())
