"""`selftrain report RUN_DIR`: rebuild a run's report.md and plots from its run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selftrain.cli import app
from selftrain.cli_errors import reporting


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/NAME)")],
) -> None:
    """Rebuild a run's report.md and plots (SRIT or DPO-ST) from its run directory: the same
    bytes the run's end wrote."""
    with reporting():
        from selftrain.pipeline.report import rebuild

        for path in rebuild(run_dir):
            typer.echo(path)
