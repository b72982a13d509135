"""The `nas` command. Thin: parses flags, calls the library, prints with rich.

Every user mistake (a bad file, flag or value) ends as `location: message` plus a hint on
stderr with exit code 2 and no traceback; `--debug` shows the traceback.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from .. import __version__
from ..errors import SpaceError, UserError

app = typer.Typer(
    name="nas", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="cellsearch: neural architecture search over recurrent cells.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cellsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    _state["debug"] = debug


def debug_enabled() -> bool:
    return _state["debug"]


def report_user_error(exc: UserError) -> None:
    """Print a user error the way every command does."""
    text = str(exc) if isinstance(exc, SpaceError) else f"error: {exc.message}"
    err_console.print(text, markup=False, style="bold red")
    if exc.hint:
        err_console.print(f"  hint: {exc.hint}", markup=False)


def _register() -> None:
    from . import space_cmd  # noqa: F401  (commands register themselves on import)
    for mod in ("search_cmd", "results_cmd", "db_cmd", "bench_cmd"):
        try:
            __import__(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":
                raise


def main() -> None:
    _register()
    debug = "--debug" in sys.argv[1:]
    try:
        app(prog_name="nas")
    except UserError as exc:
        if debug:
            raise
        report_user_error(exc)
        sys.exit(2)
    except Exception as exc:
        from ..storage import StorageError

        if isinstance(exc, StorageError) and not debug:
            report_user_error(UserError(exc.message, exc.hint))
            sys.exit(2)
        raise
    except KeyboardInterrupt:
        err_console.print("interrupted", style="yellow")
        sys.exit(130)
