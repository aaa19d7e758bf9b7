"""Command line: `selftrain run [RECIPE]`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Teach small LMs to reason.")


def _overrides(pairs: list[str]) -> dict:
    """['sft.lr=1e-4', ...] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in pairs:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        node[leaf] = parsed
    return out


@app.command()
def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="recipe YAML; default: the embedded one")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: runs/NAME)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: sft.lr=1e-4")
    ] = None,
) -> None:
    """Run a recipe end to end; rerunning the same command resumes where it stopped."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from selftrain.config import RecipeError, load_recipe
    from selftrain.models import ModelLoadError
    from selftrain.pipeline import srit
    from selftrain.pipeline.rundir import RunDirError

    try:
        r = load_recipe(recipe, _overrides(set_ or []))
    except RecipeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        srit.run(r, run_dir or Path("runs") / r.name)
    except (ModelLoadError, RunDirError, ValueError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def version() -> None:
    """Print selftrain's version."""
    from selftrain import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
