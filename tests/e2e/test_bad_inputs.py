"""Every bad input tried, through the command line, and the one line it gets: docs/RELIABILITY.md's
table is this list, so the two cannot drift. Each case must exit with status 2, print one line
starting ``error:`` and no traceback, and print what the table says (temporary paths as TMP).

Regenerate the table after changing a message:
    .venv/bin/python tests/e2e/test_bad_inputs.py > /tmp/table.md   (then paste it in)
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from selftrain.cli import app

DOC = Path(__file__).parents[2] / "docs" / "RELIABILITY.md"


def _tiny_recipe(model: Path) -> dict:
    return {
        "student": {"model": str(model), "lora": {"enabled": True, "r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 20, "n_validation": 4, "n_test": 4}},
        "teacher": {"n_questions": 4},
        "sft": {"max_epochs": 1, "eval_every": 1, "val_questions": 2, "max_new_tokens": 4},
        "sampling": {"n_questions": 2, "k": 2, "max_new_tokens": 4},
        "eval": {"n": 2, "max_new_tokens": 4},
        "sft_more": False,
    }


def _recipe_file(tmp: Path, model: Path, **changes) -> str:
    body = _tiny_recipe(model)
    for key, value in changes.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _ran(tmp: Path, model: Path) -> str:
    """A finished tiny run's directory."""
    run = tmp / "run"
    out = CliRunner().invoke(app, ["run", _recipe_file(tmp, model), "--run-dir", str(run)])
    assert out.exit_code == 0, out.output
    return str(run)


def _gsm8k(tmp: Path, test: bytes) -> str:
    root = tmp / "data" / "gsm8k"
    root.mkdir(parents=True)
    row = {"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"}
    (root / "train.jsonl").write_text(json.dumps(row) + "\n")
    (root / "test.jsonl").write_bytes(test)
    return str(tmp / "data")


def _case_recipe_not_utf8(tmp, model):
    (tmp / "r.yaml").write_bytes(b"name: caf\xe9\n")
    return ["run", str(tmp / "r.yaml")]


def _case_recipe_folder(tmp, model):
    return ["run", str(tmp)]


def _case_recipe_yaml(tmp, model):
    (tmp / "r.yaml").write_text("sft: {lr: [1\n")
    return ["run", str(tmp / "r.yaml")]


def _case_recipe_unknown_key(tmp, model):
    (tmp / "r.yaml").write_text("sft:\n  learning_rate: 1e-4\n")
    return ["run", str(tmp / "r.yaml")]


def _case_set_no_key(tmp, model):
    return ["run", "--set", "=1"]


def _case_set_yaml(tmp, model):
    return ["run", "--set", "sft.lr=[1, 2"]


def _case_set_unknown(tmp, model):
    return ["run", "--set", "sampling.kk=4"]


def _case_report_to_unknown(tmp, model):
    return ["run", "--set", "report_to=tensorbord"]


def _case_k_huge(tmp, model):
    return ["run", "--set", "sampling.k=1e9"]


def _case_tokens_huge(tmp, model):
    return ["run", "--set", "sampling.max_new_tokens=1000000"]


def _case_model_missing(tmp, model):
    return ["run", _recipe_file(tmp, model, student={"model": str(tmp / "nope")})]


def _case_model_file(tmp, model):
    (tmp / "weights.bin").write_bytes(b"x")
    return ["run", _recipe_file(tmp, model, student={"model": str(tmp / "weights.bin")})]


def _case_task_unknown(tmp, model):
    return ["run", _recipe_file(tmp, model, task={"name": "nope"})]


def _case_split_empty(tmp, model):
    return ["run", _recipe_file(tmp, model, eval={"n_per_split": {"in_domain": 0}})]


def _case_run_dir_file(tmp, model):
    (tmp / "run").write_text("x")
    return ["run", _recipe_file(tmp, model), "--run-dir", str(tmp / "run")]


def _case_other_recipe(tmp, model):
    run = _ran(tmp, model)
    return ["run", _recipe_file(tmp, model, seed=7), "--run-dir", run]


def _case_state_broken(tmp, model):
    run = _ran(tmp, model)
    (Path(run) / "state.json").write_text('{"done": [')
    return ["run", _recipe_file(tmp, model), "--run-dir", run]


def _case_saved_recipe_broken(tmp, model):
    run = _ran(tmp, model)
    (Path(run) / "recipe.yaml").write_text("name: [unclosed\n")
    return ["run", _recipe_file(tmp, model), "--run-dir", run]


def _case_eval_out_file(tmp, model):
    (tmp / "out").write_text("x")
    return ["eval", "--model", str(model), "--tasks", "arithmetic", "--out", str(tmp / "out")]


def _case_eval_other_settings(tmp, model):
    first = ["eval", "--model", str(model), "--tasks", "arithmetic", "--limit", "2"]
    first += ["--max-new-tokens", "4", "--out", str(tmp / "out")]
    assert CliRunner().invoke(app, first).exit_code == 0
    return [*first[:-4], "--max-new-tokens", "5", "--out", str(tmp / "out")]


def _case_eval_limit_zero(tmp, model):
    return ["eval", "--model", str(model), "--tasks", "arithmetic", "--limit", "0"]


def _case_adapter_missing(tmp, model):
    return ["eval", "--model", str(model), "--tasks", "arithmetic", "--adapter", str(tmp / "sft")]


def _case_task_name(tmp, model):
    return ["eval", "--model", str(model), "--tasks", "gsm9k"]


def _case_data_not_utf8(tmp, model):
    data = _gsm8k(tmp, b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    return ["eval", "--model", str(model), "--tasks", "gsm8k", "--data-dir", data]


def _case_data_not_json(tmp, model):
    data = _gsm8k(tmp, b'{"question": "1 + 1"\n')
    return ["eval", "--model", str(model), "--tasks", "gsm8k", "--data-dir", data]


def _case_data_empty(tmp, model):
    data = _gsm8k(tmp, b"")
    return ["eval", "--model", str(model), "--tasks", "gsm8k", "--data-dir", data]


def _case_data_missing(tmp, model):
    (tmp / "data").mkdir()
    return ["eval", "--model", str(model), "--tasks", "svamp", "--data-dir", str(tmp / "data")]


def _case_device(tmp, model):
    return ["run", _recipe_file(tmp, model, student={"device": "cuda:3"})]


def _case_compare_missing(tmp, model):
    return ["compare", str(tmp / "a"), str(tmp / "b")]


def _case_compare_out_folder(tmp, model):
    for name in ("a", "b"):
        (tmp / name).mkdir()
        (tmp / name / "x.jsonl").write_text('{"id": "1", "correct": true}\n')
    return ["compare", str(tmp / "a"), str(tmp / "b"), "--out", str(tmp)]


def _case_export_not_a_run(tmp, model):
    return ["export-data", str(tmp), str(tmp / "out")]


def _case_export_out_exists(tmp, model):
    (tmp / "run").mkdir()
    return ["export-data", str(tmp / "run"), str(tmp)]


def _case_export_format(tmp, model):
    return ["export-data", str(tmp), str(tmp / "out"), "--format", "csv"]


def _case_teacher_down(tmp, model):
    args = ["demos", "--task", "arithmetic", "--teacher", "api", "--model", "m"]
    args += ["--base-url", "http://127.0.0.1:9/v1", "--limit", "1", "--max-retries", "0"]
    return [*args, "--out", str(tmp / "d.jsonl"), "--cache-dir", str(tmp / "c"), "--no-progress"]


def _case_export_missing(tmp, model):
    return ["export", str(tmp / "runs" / "x" / "sft"), str(tmp / "out")]


def _case_export_out_taken(tmp, model):
    (tmp / "out").mkdir()
    (tmp / "out" / "notes.txt").write_text("mine")
    return ["export", str(model), str(tmp / "out")]


def _case_export_gguf_qwen2(tmp, model):
    from selftrain.models import load_tokenizer, tiny_model

    tokenizer = load_tokenizer(str(model))
    tiny_model("qwen2", len(tokenizer)).save_pretrained(tmp / "qwen2")
    tokenizer.save_pretrained(tmp / "qwen2")
    return ["export", str(tmp / "qwen2"), str(tmp / "out"), "--gguf", "f16"]


def _case_export_hub_id(tmp, model):
    return ["export", str(model), str(tmp / "out"), "--push-to-hub", "me/my model"]


def _case_own_data_row(tmp, model):
    rows = [{"question": f"{n} + 1?", "answer": n + 1} for n in range(2)]
    rows.append({"question": "2 + 2?", "answer": "four"})
    (tmp / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sizes = {"train": 1, "validation": 1, "test": 1}
    task = {"name": "custom", "args": {"path": str(tmp / "mine.jsonl"), "split_sizes": sizes}}
    return ["run", _recipe_file(tmp, model, task=task, eval={"splits": ["test"]})]


def _case_own_data_key(tmp, model):
    return ["eval", "--model", str(model), "--tasks", "custom", "--task-arg", "quesion_field=q"]


# (what is wrong, how to make it); the table's rows, in order
CASES: list[tuple[str, Callable[[Path, Path], list[str]]]] = [
    ("recipe file not UTF-8", _case_recipe_not_utf8),
    ("recipe path is a folder", _case_recipe_folder),
    ("recipe file not YAML", _case_recipe_yaml),
    ("recipe key unknown", _case_recipe_unknown_key),
    ("`--set =1` (no key)", _case_set_no_key),
    ("`--set` value not YAML", _case_set_yaml),
    ("`--set` key unknown", _case_set_unknown),
    ("`sampling.k=1e9`", _case_k_huge),
    ("`max_new_tokens` of a million", _case_tokens_huge),
    ("student model path missing", _case_model_missing),
    ("student model path a plain file", _case_model_file),
    ("task name unknown (recipe)", _case_task_unknown),
    ("a split of 0 questions", _case_split_empty),
    ("run directory is a file", _case_run_dir_file),
    ("run directory of another recipe", _case_other_recipe),
    ("state.json cut short", _case_state_broken),
    ("saved recipe.yaml broken", _case_saved_recipe_broken),
    ("device that is not there", _case_device),
    ("`eval --out` is a file", _case_eval_out_file),
    ("`eval` into a folder made with other settings", _case_eval_other_settings),
    ("`eval --limit 0`", _case_eval_limit_zero),
    ("`eval --adapter` missing", _case_adapter_missing),
    ("`eval --tasks` name unknown", _case_task_name),
    ("data file not UTF-8", _case_data_not_utf8),
    ("data file not JSON", _case_data_not_json),
    ("data file empty", _case_data_empty),
    ("data file missing", _case_data_missing),
    ("`compare` folder missing", _case_compare_missing),
    ("`compare --out` is a folder", _case_compare_out_folder),
    ("`export-data` of a folder that is not a run", _case_export_not_a_run),
    ("`export-data` into a folder that exists", _case_export_out_exists),
    ("`export-data --format` unknown", _case_export_format),
    ("API teacher unreachable", _case_teacher_down),
    ("`export` checkpoint missing", _case_export_missing),
    ("`export` into a folder with files", _case_export_out_taken),
    ("`export --gguf` of a Qwen2 model", _case_export_gguf_qwen2),
    ("`export --push-to-hub` id malformed", _case_export_hub_id),
    ("own data: a malformed row", _case_own_data_row),
    ("own data: `--task-arg` key unknown", _case_own_data_key),
    ("recipe `report_to` names no tracker", _case_report_to_unknown),
]


def _message(tmp: Path, model: Path, make: Callable[[Path, Path], list[str]]) -> tuple[int, str]:
    """The exit status and the line a case prints, with its paths as TMP and MODEL."""
    out = CliRunner().invoke(app, make(tmp, model), catch_exceptions=False)
    text = out.output.replace(str(tmp), "TMP").replace(str(model), "MODEL")
    text = text.replace(f"{DOC.parents[1]}/", "").replace("see root ", "see selftrain ")
    lines = [line for line in text.splitlines() if line.strip() and "Loading weights" not in line]
    errors = [line for line in lines if "error" in line.lower() or "Error" in line]
    return out.exit_code, (errors or lines or [""])[-1].strip()


def _documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\| (.+?) \| `(.+)` \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


@pytest.mark.parametrize(("what", "make"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_input_gets_the_documented_line(what, make, tmp_path, tiny_dir):
    code, line = _message(tmp_path, tiny_dir, make)
    assert code == 2, line
    assert "Traceback" not in line
    assert _documented().get(what) == line, f"docs/RELIABILITY.md's row for {what!r}"


def test_the_table_lists_exactly_the_cases():
    assert list(_documented()) == [what for what, _ in CASES]


if __name__ == "__main__":  # print the table's rows
    import tempfile

    from selftrain.models import load_tokenizer, tiny_model

    with tempfile.TemporaryDirectory() as d:
        model = Path(d) / "tiny"
        tokenizer = load_tokenizer()
        tiny_model("llama", len(tokenizer)).save_pretrained(model)
        tokenizer.save_pretrained(model)
        for i, (what, make) in enumerate(CASES):
            tmp = Path(d) / f"case{i}"
            tmp.mkdir()
            code, line = _message(tmp, model, make)
            sys.stdout.write(f"| {what} | `{line}` |\n")
            if code != 2:
                sys.stderr.write(f"{what}: exit status {code}\n")
