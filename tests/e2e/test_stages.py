"""The per-stage commands (cli_stages.py): `selftrain sft`, `sample`, `pairs`, `rft` and `dpo`
chained by hand write the same files as `selftrain run` with the same recipe; a stage run
before the one that makes its input says which file is missing and which command makes it."""

from __future__ import annotations

import hashlib
import json

import yaml
from typer.testing import CliRunner

from selftrain.cli import app

# the tiny SRIT recipe of test_pipeline.py, with RFT trained on the demonstrations too (a
# random model solves nothing) and DPO from it; only the evaluation the final model needs
TINY = {
    "name": "stages",
    "student": {"lora": {"enabled": True, "r": 4}, "device": "cpu", "autocast_bf16": False},
    "task": {"name": "arithmetic", "args": {"n_train": 24, "n_validation": 4, "n_test": 4}},
    "teacher": {"n_questions": 8},
    "sft": {"max_epochs": 1, "eval_every": 1, "patience": 1, "val_questions": 2,
            "max_new_tokens": 8, "batch_size": 4},
    "sampling": {"n_questions": 4, "offset": 0, "k": 2, "max_new_tokens": 8, "batch_size": 8},
    "rft": {"enabled": True, "with_demos": True, "batch_size": 4},
    "dpo": {"enabled": True, "batch_size": 2, "max_steps": 2},
    "sft_more": False,
    "eval": {"evaluate_base": False, "n": 2, "max_new_tokens": 8, "batch_size": 8,
             "splits": ["in_domain"]},
}  # fmt: skip
FILES = [
    "data/train.jsonl",
    "demos.jsonl",
    "sft/model/adapter_model.safetensors",
    "samples.jsonl",
    "pairs.jsonl",
    "rft/model/adapter_model.safetensors",
    "dpo/model/adapter_model.safetensors",
]


def _recipe(tiny_dir, tmp_path):
    path = tmp_path / "recipe.yaml"
    student = {**TINY["student"], "model": str(tiny_dir)}
    path.write_text(yaml.safe_dump({**TINY, "student": student}))
    return str(path)


def _cli(*argv: str, code: int = 0):
    result = CliRunner().invoke(app, list(argv))
    assert result.exit_code == code, result.output[-3000:]
    return result


def _sha256(path) -> str:
    """A file's hash; demos.jsonl's without each answer's time stamp (``at``)."""
    if path.name != "demos.jsonl":
        return hashlib.sha256(path.read_bytes()).hexdigest()
    rows = [{k: v for k, v in json.loads(x).items() if k != "at"} for x in path.open()]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def test_stage_commands_chained_write_what_run_writes(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, tmp_path)
    by_hand, whole = tmp_path / "by_hand", tmp_path / "whole"
    for command, output in [
        ("sft", "sft/model"),
        ("sample", "samples.jsonl"),
        ("pairs", "pairs.jsonl"),
        ("rft", "rft/model"),
        ("dpo", "dpo/model"),
    ]:
        result = _cli(command, recipe, "--run-dir", str(by_hand))
        assert f"{command}: {by_hand / output}" in result.output
        assert (by_hand / output).exists()  # there to inspect before the next stage
    state = json.loads((by_hand / "state.json").read_text())
    assert state["done"] == ["data", "demos", "sft", "samples", "pairs", "rft_data", "rft", "dpo"]
    _cli("run", recipe, "--run-dir", str(whole))
    for name in FILES:
        assert _sha256(by_hand / name) == _sha256(whole / name), name
    # a done stage run again is left as it is (`selftrain run` finishing a run made by hand:
    # test_readme.py's "selftrain run --run-dir runs/steps")
    dpo = by_hand / "dpo/model/adapter_model.safetensors"
    before = dpo.stat().st_mtime_ns
    assert "stage dpo is done" in _cli("dpo", recipe, "--run-dir", str(by_hand)).output
    assert dpo.stat().st_mtime_ns == before


def test_a_stage_before_its_input_names_the_file_and_the_command(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, tmp_path)
    run = tmp_path / "run"
    result = _cli("pairs", recipe, "--run-dir", str(run), code=2)
    assert f"{run / 'demos.jsonl'} is missing" in result.output
    assert "'selftrain sft'" in result.output
    assert not run.exists()  # nothing made, nothing loaded
    result = _cli("dpo", recipe, "--run-dir", str(run), "--set", "dpo.enabled=false", code=2)
    assert "--set dpo.enabled=true" in result.output
