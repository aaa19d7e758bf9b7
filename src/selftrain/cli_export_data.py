"""`selftrain export-data`: a run's pairs, SFT examples and judged samples in TRL's formats."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selftrain.cli import app
from selftrain.cli_errors import reporting


@app.command("export-data")
def export_data_(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (runs/NAME)")],
    out: Annotated[Path, typer.Argument(help="a new folder for the tables")],
    format_: Annotated[
        str, typer.Option("--format", help="datasets (save_to_disk folders), parquet or jsonl")
    ] = "datasets",
) -> None:
    """Write a run's preference pairs (TRL's DPO format), SFT examples (`messages`) and judged
    samples (prompt, completion, label) as tables TRL and `datasets` load."""
    with reporting():
        from selftrain.export_data import export_data

        counts = export_data(run_dir, out, format_)
    for name, n in counts.items():
        typer.echo(f"{name}: {n} rows")
    typer.echo(f"written to {out}")
