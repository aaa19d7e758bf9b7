"""The run report (selftrain/pipeline/srit_report.py, report.py): report.md's sections carry
metrics.json's numbers, the plots are PNGs that decode, `selftrain report` rebuilds the same
bytes, a folder that is not a run directory is a clear error, and the report belongs to no
stage's outputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selftrain.cli import app
from selftrain.config import load_recipe
from selftrain.pipeline.report import rebuild
from selftrain.pipeline.srit_report import pass_at
from selftrain.records import snapshot
from selftrain.rundir import RunDirError

PNGS = ["accuracy.png", "sft_validation.png", "dpo_training.png", "pass_at_k.png"]


def _eval(acc: float, lo: float, hi: float, n: int = 50) -> dict:
    return {"accuracy": acc, "n": n, "ci95": [lo, hi], "mean_tokens": 40.0}


def _run_dir(root: Path) -> Path:
    """A finished SRIT run directory, written by hand."""
    run = root / "run"
    recipe = load_recipe(None, {"name": "hand-made", "sampling": {"k": 4}})
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    splits = {"in_domain": (0.3, 0.1912, 0.4377), "out_of_domain": (0.12, 0.0562, 0.2381)}
    metrics = {
        model: {s: _eval(a + bump, lo + bump, hi + bump) for s, (a, lo, hi) in splits.items()}
        for model, bump in [("base", 0.0), ("sft", 0.1), ("dpo", 0.16), ("sft_more", 0.12)]
    }
    metrics["sft_training"] = {"steps": 40, "examples": 120, "best_step": 30}
    metrics["rft_training"] = {"skipped": "no RFT data"}
    metrics["dpo_training"] = {"steps": 3, "pairs": 24, "last": {}}
    metrics["sft_more_training"] = {"steps": 3, "examples": 120}
    metrics["samples"] = {"k": 4, "questions": 2, "paths": 8, "pass@k": 0.5, "path_accuracy": 0.25,
                          "all_correct": 0, "none_correct": 1, "mean_tokens": 33.5}  # fmt: skip
    metrics["compare"] = {
        "dpo_vs_sft": {"in_domain": {"n": 50, "a": 0.46, "b": 0.4, "diff": 0.06,
                                     "ci95": [-0.0213, 0.1401], "p_value": 0.2891,
                                     "a_only": 7, "b_only": 4}},
    }  # fmt: skip
    metrics["stage_seconds"] = {"sft": 60.0, "dpo": 30.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "sft").mkdir()
    history = [{"step": s, "train_loss": 1.0 / s, "accuracy": a, "loss": 0.9 / s}
               for s, a in [(10, 0.2), (20, 0.35), (30, 0.45), (40, 0.4)]]  # fmt: skip
    (run / "sft" / "history.json").write_text(json.dumps(history))
    (run / "dpo").mkdir()
    dpo = [{"step": s, "loss": 0.69 - 0.1 * s, "reward_accuracy": 0.5 + 0.1 * s,
            "margin": 0.02 * s, "chosen_logp_change": -0.5 * s, "rejected_logp_change": -2.0 * s}
           for s in (1, 2, 3)]  # fmt: skip
    (run / "dpo" / "history.json").write_text(json.dumps(dpo))
    rows = [{"id": q, "style": "cot", "text": "x", "correct": c, "tokens": 30}
            for q, cs in [("q1", [True, True, False, False]), ("q2", [False] * 4)]
            for c in cs]  # fmt: skip
    rows.append({"id": "q1", "style": "direct", "text": "x", "correct": True, "tokens": 3})
    (run / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def test_report_has_every_section_with_the_run_numbers(tmp_path):
    run = _run_dir(tmp_path)
    written = rebuild(run)
    assert sorted(p.name for p in written) == sorted(["report.md", *PNGS])
    text = (run / "report.md").read_text()
    for heading in ["## Accuracy", "## Paired comparisons", "## Training", "## SFT validation",
                    "## DPO", "## Sampling"]:  # fmt: skip
        assert heading in text, heading
    assert "| dpo | 46.0 [35.1, 59.8] (n=50) | 28.0 [21.6, 39.8] (n=50) |" in text
    assert (
        "| dpo vs sft | in_domain | 46.0 | 40.0 | +6.0 [-2.1, +14.0] | 0.289 | 7 / 4 | 50 |" in text
    )
    assert "| sft | 120 examples | 40 | best step 30 |" in text
    assert "| rft | - | - | skipped: no RFT data |" in text
    assert "| 30 | 0.0333 | 45.0 | 0.0300 |" in text
    assert "| step 3 | 0.39 | 0.8 | 0.06 | -1.5 | -6 |" in text
    assert "| 4 | 2 | 8 | 50.0 | 25.0 | 0 | 1 | 33.5 |" in text
    assert "Total stage time: 1.5 min." in text
    for name in PNGS:
        assert f"]({name})" in text
        image = __import__("matplotlib.image").image.imread(run / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_pass_at_j_is_the_unbiased_estimate():
    rows = [{"id": "a", "correct": c} for c in (True, False, False, False)]
    rows += [{"id": "b", "correct": c} for c in (True, True, False, False)]
    got = dict(pass_at(rows, 4))
    # a: 1 - C(3,j)/C(4,j) = j/4; b: 1 - C(2,j)/C(4,j) = 0.5, 5/6, 1, 1
    assert got[1] == pytest.approx((0.25 + 0.5) / 2)
    assert got[2] == pytest.approx((0.5 + 5 / 6) / 2)
    assert got[4] == pytest.approx(1.0)


def test_cli_rebuild_is_byte_identical_and_leaves_the_stage_records(tmp_path):
    run = _run_dir(tmp_path)
    rebuild(run)
    first = {name: (run / name).read_bytes() for name in ["report.md", *PNGS]}
    before = snapshot(run)
    for name in first:
        (run / name).unlink()
    out = CliRunner().invoke(app, ["report", str(run)])
    assert out.exit_code == 0, out.output
    assert {name: (run / name).read_bytes() for name in first} == first
    assert snapshot(run) == before and not any(n in before for n in first)


@pytest.mark.parametrize("make", ["missing", "no_recipe", "not_a_recipe"])
def test_a_folder_that_is_not_a_run_directory_is_one_clear_error(tmp_path, make):
    run = _run_dir(tmp_path)
    if make == "missing":
        run = tmp_path / "nowhere"
        want = "no such run directory"
    elif make == "no_recipe":
        run = run / "sft"
        want = "is not a run directory: it has no recipe.yaml"
    else:
        (run / "recipe.yaml").write_text("- a list\n")
        want = "recipe.yaml: not a recipe"
    with pytest.raises(RunDirError, match=want):
        rebuild(run)
    out = CliRunner().invoke(app, ["report", str(run)])
    assert out.exit_code == 2 and want in out.output


@pytest.mark.parametrize("stopped_after", ["eval_base", "demos"])
def test_a_run_stopped_early_gets_the_sections_it_has(tmp_path, stopped_after):
    """A run killed after evaluating the base model (or before): the accuracy it has, no
    other section, and no warning from matplotlib (an empty legend)."""
    run = _run_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    kept = {"base": metrics["base"]} if stopped_after == "eval_base" else {"demos": {}}
    (run / "metrics.json").write_text(json.dumps(kept))
    for rel in ("sft/history.json", "dpo/history.json", "samples.jsonl"):
        (run / rel).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [p.name for p in rebuild(run)] == ["report.md", "accuracy.png"]
    text = (run / "report.md").read_text()
    assert ("| base | 30.0 [19.1, 43.8] (n=50) |" in text) == (stopped_after == "eval_base")
    assert "## SFT validation" not in text and "## DPO" not in text and "## Sampling" not in text


def test_dpo_table_shows_each_step_once():
    """One step: one row (not the same step twice and a mean of it); more: the first, the last
    and the mean of the last ten."""
    from selftrain.pipeline.srit_report import dpo_table

    def step(s: int) -> dict:
        return {"step": s, "loss": 0.5, "reward_accuracy": 1.0, "margin": 0.1 * s,
                "chosen_logp_change": 0.0, "rejected_logp_change": -s}  # fmt: skip

    one = dpo_table([step(1)])
    assert one.count("| step 1 |") == 1 and "mean" not in one
    many = dpo_table([step(s) for s in range(1, 13)])
    assert "| step 1 |" in many and "| step 12 |" in many
    assert "| mean of the last 10 | 0.5 | 1 | 0.75 |" in many
