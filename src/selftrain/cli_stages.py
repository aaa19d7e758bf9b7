"""Per-stage commands: `selftrain sft`, `sample`, `pairs`, `rft` and `dpo` run one SRIT stage
in a run directory, from the files the stages before it wrote, so a user can run a stage,
inspect what it wrote and go on (or finish with `selftrain run`, which resumes after them).

Each opens the run directory as `selftrain run` does (the lock, the recipe it was started with,
state.json) and calls the pipeline's own stage (pipeline/srit.py, :class:`Stages`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selftrain.cli import _overrides, _start, app
from selftrain.cli_errors import fail, reporting

Recipe = Annotated[Path | None, typer.Argument(help="recipe YAML; default: the embedded one")]
RunDirOption = Annotated[
    Path | None, typer.Option("--run-dir", help="run directory (default: runs/NAME)")
]
Sets = Annotated[list[str] | None, typer.Option("--set", help="override a key: sft.lr=1e-4")]

# what each command says it does (its help) and the command that usually comes next
_HELP = {
    "sft": (
        "Stage 1: the teacher's demonstrations (demos.jsonl, when not there yet) and SFT on "
        "them (sft/model).",
        "sample",
    ),
    "sample": ("The SFT model's judged reasoning paths (samples.jsonl).", "pairs"),
    "pairs": ("Preference pairs of the judged samples (pairs.jsonl).", "rft or dpo"),
    "rft": ("RFT: SFT from sft/model on the student's correct paths (rft/model).", "dpo or run"),
    "dpo": ("DPO on pairs.jsonl from the RFT or SFT model (dpo/model).", "run"),
}


def _stage(command: str, recipe: Path | None, run_dir: Path | None, sets: list[str]) -> None:
    """Run ``command``'s stage of ``recipe`` (an SRIT recipe) in ``run_dir``."""
    _start()
    overrides = _overrides(sets)
    with reporting():
        from selftrain.config import load_recipe
        from selftrain.pipeline import srit

        r = load_recipe(recipe, overrides)
        if r.method != "srit":
            fail(
                f"'selftrain {command}' runs a stage of an SRIT recipe; this one is method "
                f"{r.method}: run it with 'selftrain run'"
            )
        out = srit.run_stage(r, run_dir or Path("runs") / r.name, command)
    what = str(out) if out.exists() else f"nothing ({out} skipped: see metrics.json)"
    typer.echo(f"{command}: {what}\nnext: selftrain {_HELP[command][1]} (same recipe, --run-dir)")


def _register(command: str) -> None:
    def stage(recipe: Recipe = None, run_dir: RunDirOption = None, set_: Sets = None) -> None:
        _stage(command, recipe, run_dir, set_ or [])

    stage.__doc__ = (
        f"{_HELP[command][0]}\n\nReads what the stages before it wrote in the run directory; "
        "rerunning a done stage leaves it as it is."
    )
    app.command(command)(stage)


for _command in ("sft", "sample", "pairs", "rft", "dpo"):
    _register(_command)
