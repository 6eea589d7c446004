"""The `mindscope` command line: one click group, one module per concern.

Each module under `mindscope.cli` exposes `commands`, a list of click commands.
Bad input raises ValueError/TypeError/FileNotFoundError inside; `main` turns those
into one line on stderr and exit status 2. A traceback means a bug.
"""

from __future__ import annotations

import sys

import click

from mindscope._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mindscope")
def cli() -> None:
    """Look inside a trained PyTorch network: weights, activations, attributions."""


def _register() -> None:
    from mindscope.cli import activations, attribute, evaluate, report, train, weights

    for module in (train, weights, activations, attribute, evaluate, report):
        for command in module.commands:
            cli.add_command(command)


_register()

USER_ERRORS = (
    ValueError,
    TypeError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    FileExistsError,
)


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
    except USER_ERRORS as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{message}: {exc.filename}"
        click.echo(f"mindscope: error: {message}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
