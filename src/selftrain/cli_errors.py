"""The command line's one error path (selftrain/errors.py says which failures are whose): a
failure is one line, ``error: ...``, and an exit status; the traceback only with --debug."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import NoReturn

import typer
import typer.core

from selftrain.errors import USER_ERROR, describe, one_line

DEBUG = {"on": False}  # set by `selftrain --debug` or SELFTRAIN_DEBUG=1


class OneLineErrors(typer.core.TyperGroup):
    """Usage errors (an unknown option, a value out of range, a bad --set) as one line like
    every other error (see :func:`reporting`), where click draws a box with the usage."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):  # type: ignore[override]
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.TyperException as e:  # click's exceptions, as typer vendors them
            if type(e).__name__ == "NoArgsIsHelpError":  # `selftrain` alone: the help
                e.show()
                sys.exit(0)
            ctx = getattr(e, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            typer.echo(f"error: {one_line(e.format_message())}{hint}", err=True)
            sys.exit(getattr(e, "exit_code", USER_ERROR))
        except typer.Abort:
            typer.echo("error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def fail(error: object, code: int = USER_ERROR) -> NoReturn:
    """Print ``error: ...`` on stderr (with the process's rank under a launcher) and exit."""
    several = os.environ.get("WORLD_SIZE", "1") != "1"
    prefix = f"rank {os.environ.get('RANK', 0)}: " if several else ""
    typer.echo(f"{prefix}error: {error}", err=True)
    raise typer.Exit(code) from None


@contextlib.contextmanager
def reporting() -> Iterator[None]:
    """One error path for every command: a failure is one line and an exit status
    (selftrain/errors.py); the traceback only with --debug."""
    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except (Exception, KeyboardInterrupt) as e:
        if DEBUG["on"]:
            raise
        message, code = describe(e)
        fail(message, code)
