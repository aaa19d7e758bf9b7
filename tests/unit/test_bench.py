"""`selftrain eval`: generative and log-likelihood scoring on real benchmark files, tiny model."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from selftrain import tasks
from selftrain.cli import app
from selftrain.eval.loglik import evaluate_loglik
from selftrain.eval.suite import markdown_table, run_eval, spread
from selftrain.io import read_jsonl
from selftrain.models import ModelLoadError
from selftrain.tasks.data import DataError, data_dir
from selftrain.training.loop import collate, scorer_of, token_logps


@pytest.fixture(scope="module")
def root():
    try:
        return data_dir()
    except DataError as exc:
        pytest.skip(f"benchmark data directory not found (expected ../shared/data): {exc}")


def test_run_eval_writes_results_grouped_by_domain_and_resumes(make_student, root, tmp_path):
    student = make_student()
    built = [tasks.get("gsm8k", data_dir=root), tasks.get("csqa", data_dir=root)]
    summary = run_eval(
        student, built, tmp_path, limit=3, scoring="auto", max_new_tokens=6, train_task="gsm8k"
    )
    gsm, csqa = summary["tasks"]["gsm8k"], summary["tasks"]["csqa"]
    assert (gsm["scoring"], gsm["domain"], gsm["n"]) == ("generate", "in_domain", 3)
    assert (csqa["scoring"], csqa["domain"], csqa["n"]) == ("loglik", "out_of_domain", 3)
    assert 0 <= gsm["ci95"][0] <= gsm["accuracy"] <= gsm["ci95"][1] <= 1
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["tasks"].keys() == {"gsm8k", "csqa"}
    assert "in_domain" in saved and "out_of_domain" in saved
    md = (tmp_path / "results.md").read_text()
    assert "| gsm8k | in_domain | generate | test | 3 |" in md
    rows = read_jsonl(tmp_path / "gsm8k.generate.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(e.id for e in spread(built[0].load(), 3))
    # A rerun decodes nothing it has already decoded.
    before = (tmp_path / "gsm8k.generate.jsonl").read_text()
    run_eval(student, built[:1], tmp_path, limit=3, max_new_tokens=6)
    assert (tmp_path / "gsm8k.generate.jsonl").read_text() == before


def test_spread_takes_evenly_spaced_examples(root):
    mmlu = tasks.get("mmlu", data_dir=root)
    picked = spread(mmlu.load(), 57)
    assert len({e.meta["subject"] for e in mmlu.load(None, 57)}) == 1  # the first 57: one subject
    assert len({e.meta["subject"] for e in picked}) > 30
    assert spread(picked, None) == picked and spread(picked, 100) == picked


def test_loglik_picks_the_option_with_the_highest_normalised_logprob(make_student, root):
    student = make_student()
    task = tasks.get("arc_challenge", data_dir=root)
    examples = task.load(None, 4)
    res = evaluate_loglik(student, task, examples, batch_size=3)
    assert res["n"] == 4
    # Recompute one example's scores by hand.
    ex = examples[0]
    context = student.prompt_ids(ex.question)
    texts = [t.strip() for t in task.choice_continuations(ex)]
    seqs = [(context, student.completion_ids(t, eos=False)) for t in texts]
    with torch.no_grad():
        lp, _ = token_logps(scorer_of(student), *collate(seqs, student.pad_id, "cpu"))
    norm = [v / len(t) for v, t in zip(lp.tolist(), texts, strict=True)]
    best = task.choice_answers(ex)[max(range(len(norm)), key=norm.__getitem__)]
    one = evaluate_loglik(student, task, [ex])
    assert one["accuracy"] == float(best == ex.answer)


def test_loglik_refuses_free_form_tasks(make_student, root, tmp_path):
    with pytest.raises(ValueError, match="free-form"):
        run_eval(make_student(), [tasks.get("gsm8k", data_dir=root)], tmp_path, scoring="loglik")


def test_markdown_table_lists_every_task():
    summary = {
        "model": "m",
        "tasks": {
            "svamp": {
                "scoring": "generate",
                "split": "test",
                "n": 10,
                "accuracy": 0.5,
                "ci95": [0.2, 0.8],
                "seconds": 1.0,
            }
        },
    }
    assert "| svamp | - | generate | test | 10 | 50.0 | 20.0-80.0 | 1.0 |" in markdown_table(
        summary
    )


def test_cli_eval_and_tasks(tiny_dir, root, tmp_path):
    runner = CliRunner()
    out = tmp_path / "ev"
    result = runner.invoke(
        app,
        [
            "eval",
            "--model",
            str(tiny_dir),
            "--tasks",
            "svamp,strategyqa",
            "--limit",
            "2",
            "--scoring",
            "auto",
            "--max-new-tokens",
            "4",
            "--data-dir",
            str(root),
            "--out",
            str(out),
            "--precision",
            "fp32",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "results.json").read_text())["tasks"]["strategyqa"]["n"] == 2
    bad = runner.invoke(app, ["eval", "--model", str(tiny_dir), "--tasks", "nope"])
    assert bad.exit_code != 0 and "unknown task 'nope'" in bad.output
    missing = runner.invoke(
        app, ["eval", "--model", str(tiny_dir), "--tasks", "svamp", "--data-dir", str(tmp_path)]
    )
    assert missing.exit_code == 2 and "svamp/SVAMP.json" in missing.output
    listed = runner.invoke(app, ["tasks", "--data-dir", str(root)])
    assert listed.exit_code == 0 and "gsm8k" in listed.output and "7,473" in listed.output


def test_cli_eval_applies_a_run_checkpoint(make_student, tiny_dir, tmp_path):
    trained = make_student(lora=True)
    with torch.no_grad():
        for name, p in trained.model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    trained.save(tmp_path / "run" / "sft" / "model")
    plain = make_student()
    before = plain.model.model.layers[0].self_attn.q_proj.weight.clone()
    plain.apply_checkpoint(tmp_path / "run" / "sft")
    after = plain.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(before, after)  # the adapter was merged in
    ids = torch.tensor([plain.prompt_ids("2+2?")])
    with torch.no_grad():
        want = trained.model(input_ids=ids).logits
        got = plain.model(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-4)
    with pytest.raises(ModelLoadError, match=r"no adapter_config\.json"):
        plain.apply_checkpoint(tmp_path)


def test_stop_pattern_waits_for_the_answer_itself(tokenizer):
    from selftrain.sampling import StopHook
    from selftrain.tasks.benchmark import BenchmarkTask

    hook = StopHook(tokenizer, BenchmarkTask.stop_regex)

    def stops(text: str) -> bool:
        return hook.done(tokenizer.encode(text, add_special_tokens=False))

    assert stops("So 3+4=7.\nThe answer is 7.\n")
    assert stops("Answer: (B)\n")
    assert stops("We get \\boxed{\\frac{1}{2}}\n")
    assert stops("The answer is 5.\n\nQuestion:")
    assert not stops("The answer is:\n")
    assert not stops("The answer is 7.")  # the line has not ended yet
    assert not stops("First, 3+4=7.\n")


@pytest.mark.parametrize("command", ["eval", "demos"])
def test_a_limit_of_zero_questions_is_refused(command):
    from typer.testing import CliRunner

    from selftrain.cli import app

    out = CliRunner().invoke(app, [command, "--tasks" if command == "eval" else "--task",
                                   "arithmetic", "--limit", "0"])  # fmt: skip
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "--limit" in out.output and "greater than or equal to 1" in out.output
