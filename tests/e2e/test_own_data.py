"""A user's own data trains end to end from recipe keys alone: SRIT on a JSONL file, DPO-ST on
a CSV file, and ``selftrain eval --task-arg`` on the JSONL, whose answers are not reused once
the file is edited (tiny model, CPU)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml
from typer.testing import CliRunner

from selftrain.cli import app

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "arithmetic.jsonl"
TINY = ["--max-new-tokens", "8", "--batch-size", "8", "--device", "cpu", "--precision", "fp32"]


def _rows(n: int) -> list[dict]:
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines()[:n]]


def _run(tmp: Path, recipe: dict) -> Path:
    path, run = tmp / "recipe.yaml", tmp / "run"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))  # split_sizes: in file order
    out = CliRunner().invoke(app, ["run", str(path), "--run-dir", str(run)])
    assert out.exit_code == 0, out.output[-3000:]
    return run


def _student(model: Path) -> dict:
    return {"model": str(model), "device": "cpu", "lora": {"enabled": True, "r": 4}}


def test_srit_on_a_jsonl_file_then_eval_with_task_args(tmp_path, tiny_dir):
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _rows(28)))
    args = {
        "path": str(data),
        "split_sizes": {"train": 20, "validation": 4, "test": 4},
        "rationale_field": "rationale",
        "id_field": "id",
    }
    recipe = {
        "student": _student(tiny_dir),
        "task": {"name": "custom", "args": args},
        "teacher": {"kind": "gold", "n_questions": 4},
        "sft": {"max_epochs": 1, "eval_every": 1, "val_questions": 2, "max_new_tokens": 4},
        "sampling": {"n_questions": 2, "offset": 4, "k": 2, "max_new_tokens": 4},
        "eval": {"splits": ["test"], "n": 2, "max_new_tokens": 4},
        "sft_more": False,
    }
    run = _run(tmp_path, recipe)
    train = {d["id"]: d for d in map(json.loads, (run / "data" / "train.jsonl").open())}
    assert train["custom/0"]["rationale"] == _rows(1)[0]["rationale"]
    demos = [json.loads(x) for x in (run / "demos.jsonl").open()]
    assert len(demos) == 4 and all(d["teacher"] == "gold" and d["kept"] for d in demos)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["sft"]["test"]["n"] == 2

    argv = ["eval", "--task", "custom", "--model", str(tiny_dir), "--limit", "2", *TINY]
    argv += ["--task-arg", f"path={data}", "--task-arg", "split_sizes={train: 20, test: 8}"]
    argv += ["--out", str(tmp_path / "eval")]
    out = CliRunner().invoke(app, argv)
    assert out.exit_code == 0, out.output[-3000:]
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["tasks"]["custom"]["n"] == 2 and results["tasks"]["custom"]["split"] == "test"
    data.write_text(data.read_text().replace('"answer": ', '"answer": 1'))  # an edited file
    out = CliRunner().invoke(app, argv)
    assert out.exit_code == 2
    assert "made with other settings (data " in out.output


def test_dpo_st_on_a_csv_file(tmp_path, tiny_dir):
    data = tmp_path / "mine.csv"
    with data.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["problem", "solution", "final"])
        for row in _rows(12):
            writer.writerow([row["question"], row["rationale"], row["answer"]])
    args = {
        "path": str(data),
        "split_sizes": {"train": 8, "test": 4},
        "question_field": "problem",
        "answer_field": "final",
        "rationale_field": "solution",
    }
    recipe = {
        "method": "dpo_st",
        "student": _student(tiny_dir),
        "task": {"name": "custom", "args": args},
        "sampling": {"k": 2, "max_new_tokens": 8, "batch_size": 8},
        "eval": {"splits": ["test"], "n": 2, "max_new_tokens": 8, "batch_size": 8},
        "dpo_st": {
            "rounds": 1,
            "baselines": [],
            "limit": 2,
            "dev_holdout": 2,
            "sft_k": 1,
            "sft": {"batch_size": 2, "epochs": 1},
            "dpo": {"batch_size": 2, "max_steps": 1},
            "calculator_ablation": False,
        },
    }
    run = _run(tmp_path, recipe)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dpo_st"]["rounds"]["1"]["eval"]["test"]["n"] == 2
    train = {d["id"]: d for d in map(json.loads, (run / "data" / "train.jsonl").open())}
    assert train["custom/train/0"]["question"] == _rows(1)[0]["question"]
    assert train["custom/train/0"]["rationale"] == _rows(1)[0]["rationale"]
