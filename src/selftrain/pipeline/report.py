"""A run's report (report.md and its plots), built from the run directory's files alone: the
saved recipe, metrics.json and the stages' outputs. A run's end and `selftrain report RUN_DIR`
both call :func:`rebuild`, so the two write the same bytes."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from selftrain.config import Recipe, SRITRecipe, parse_recipe
from selftrain.io import read_json
from selftrain.pipeline import dpo_st_report, srit_report
from selftrain.rundir import RunDirError, _read_saved, _upgraded


def rebuild(run_dir: str | Path) -> list[Path]:
    """Write ``run_dir``'s report.md and plots for its method; returns the files written.
    A folder that is not a run directory is a RunDirError naming what it lacks."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(
            f"{run_dir}: no such run directory (give the folder `selftrain run` wrote)"
        )
    for name in ("recipe.yaml", "metrics.json"):
        if not (run_dir / name).is_file():
            raise RunDirError(
                f"{run_dir} is not a run directory: it has no {name} (give the folder "
                "`selftrain run` wrote, such as runs/NAME, once a stage has ended)"
            )
    recipe = saved_recipe(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    if not isinstance(metrics, dict):
        raise RunDirError(f"{run_dir / 'metrics.json'}: not a run's metrics (a JSON object)")
    if isinstance(recipe, SRITRecipe):
        return srit_report.write_files(run_dir, recipe, metrics)
    return dpo_st_report.write_files(run_dir, recipe, metrics)


def saved_recipe(run_dir: Path) -> Recipe:
    """The recipe ``run_dir`` was started with, as today's schema reads it."""
    path = run_dir / "recipe.yaml"
    saved = _read_saved(path)
    if not isinstance(saved, dict):
        raise RunDirError(f"{path}: not a recipe (a YAML mapping of sections)")
    try:
        return parse_recipe(_upgraded(saved))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "recipe"
        raise RunDirError(
            f"{path}: not a recipe this version reads ({where}: {first['msg']})"
        ) from None
