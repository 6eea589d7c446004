"""The `mindscope` command line: one click group, one module per concern.

Each module under `mindscope.cli` exposes `commands`, a list of click commands.
Bad input raises ValueError/TypeError/FileNotFoundError inside; `main` turns those
into one line on stderr and exit status 2. A traceback means a bug.
"""

from __future__ import annotations

import errno
import linecache
import sys
from pathlib import Path

import click

from mindscope._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mindscope")
def cli() -> None:
    """Look inside a trained PyTorch network: weights, activations, attributions."""


def _register() -> None:
    from mindscope.cli import activations, attribute, evaluate, report, scan, serve, train, visualise, weights

    for module in (train, weights, activations, attribute, evaluate, report, visualise, scan, serve):
        for command in module.commands:
            cli.add_command(command)


_register()

# What the library raises on purpose for bad input. A ValueError or TypeError counts only
# when a `raise` statement in mindscope itself threw it; the same types thrown by Python,
# numpy or torch mean a bug, and a bug gets its traceback.
CHECKED_ERRORS = (ValueError, TypeError)
OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)
PACKAGE = Path(__file__).resolve().parents[1]


def is_deliberate(exc: BaseException) -> bool:
    """True when `exc` came from a `raise` statement in mindscope's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    filename = Path(tb.tb_frame.f_code.co_filename).resolve()
    if PACKAGE not in filename.parents:
        return False
    return linecache.getline(str(filename), tb.tb_lineno).lstrip().startswith("raise")


def user_message(exc: BaseException) -> str | None:
    """The one line to show for bad input, or None when `exc` is a bug (or not ours to judge)."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not exc.filename and exc.strerror:
        return exc.strerror  # our own "disk full while writing RUN; ..." line
    if isinstance(exc, OS_ERRORS) or (isinstance(exc, OSError) and exc.errno == errno.ENOSPC):
        if exc.filename and exc.strerror:  # the OS's own words, without "[Errno 17]"
            return f"{exc.strerror.lower()}: {exc.filename}; check the path"
        if exc.strerror:  # ours: OSError(errno, "what happened; what to do")
            return exc.strerror
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, CHECKED_ERRORS) and is_deliberate(exc):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 ok, 2 bad input)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if not args:  # bare `mindscope`: show the help, not an error
        args = ["--help"]
    try:
        cli.main(args=args, prog_name="mindscope", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("mindscope: aborted", err=True)
        return 1
    except click.ClickException as exc:
        click.echo(f"mindscope: error: {exc.format_message()}", err=True)
        return 2
    except (*CHECKED_ERRORS, OSError) as exc:
        message = user_message(exc)
        if message is None:
            raise
        click.echo(f"mindscope: error: {message}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
