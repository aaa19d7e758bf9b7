"""DPO-ST and its self-training baseline end to end on a tiny model: both arms, resume
mid-round, answer-only questions, report and plot, the CLI."""

from __future__ import annotations

import json

import pytest

from selftrain.config import DPOSTRecipe, parse_recipe
from selftrain.io import read_jsonl
from selftrain.pipeline import dpo_st
from selftrain.pipeline.report import rebuild
from selftrain.stages import dpo as stage_dpo
from selftrain.stages import sample as stage_sample
from selftrain.stages import sft as stage_sft

# ---- the loop on a tiny model -------------------------------------------------------------------


def _recipe(tiny_dir, **dpo_st_keys) -> DPOSTRecipe:
    data = {
        "name": "dpo-st-tiny",
        "method": "dpo_st",
        "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 8, "n_validation": 2, "n_test": 4}},
        "eval": {"splits": ["in_domain", "out_of_domain"], "n": 3, "max_new_tokens": 8},
        "sampling": {"k": 2, "max_new_tokens": 8, "batch_size": 4},
        "dpo_st": {
            "rounds": 2,
            "baselines": ["self_training"],
            "n_questions": 6,
            "sft_k": 2,
            "sft": {"batch_size": 4, "epochs": 1},
            "dpo": {"batch_size": 4, "max_steps": 2, "lr": 1e-4},
            **dpo_st_keys,
        },
    }
    return parse_recipe(data)


def _with_correct_paths(real):
    """Wrap generate so the first path of each question answers correctly in its own words
    (a random tiny model is never right), so pseudo-labels and self-chosen paths exist."""

    def gen(student, items, params, engine=None):
        for batch in real(student, items, params, engine):
            out = []
            for qid, texts, lengths in batch:
                answer = _ANSWERS[qid]
                texts = [f"Adding it all up gives {answer}.\n#### {answer}", *texts[1:]]
                out.append((qid, texts, lengths))
            yield out

    return gen


_ANSWERS: dict[str, str] = {}


@pytest.fixture
def answers(tmp_path):
    from selftrain import tasks

    task = tasks.get("arithmetic", n_train=8, n_validation=2, n_test=4)
    _ANSWERS.update({e.id: e.answer for e in task.load("train")})
    return _ANSWERS


def test_two_rounds_of_both_arms_end_to_end(tiny_dir, tmp_path, monkeypatch, answers):
    monkeypatch.setattr(stage_sample, "generate", _with_correct_paths(stage_sample.generate))
    run = tmp_path / "run"
    metrics = dpo_st.run(_recipe(tiny_dir), run)
    state = json.loads((run / "state.json").read_text())
    for arm in ["dpo_st", "self_training"]:
        for r in [1, 2]:
            assert f"{arm}.r{r}.sft" in state["done"] and f"{arm}.r{r}.eval" in state["done"]
            m = metrics[arm]["rounds"][str(r)]
            for split in ["in_domain", "out_of_domain"]:
                assert m["eval"][split]["n"] == 3
            assert m["sft_samples"]["pass@k"] == 1.0  # the wrapped first path is right
            assert m["pseudo_labels"]["pseudo_labels"] > 0
            assert (run / arm / f"r{r}" / "sft" / "model" / "adapter_model.safetensors").exists()
    assert "dpo_st.r1.dpo" in state["done"] and "self_training.r1.dpo" not in state["done"]
    assert not (run / "self_training" / "r1" / "dpo_samples.jsonl").exists()
    # round 2's pairs pool round 1's samples too, and each question gets at most m pairs
    r2 = metrics["dpo_st"]["rounds"]["2"]
    assert r2["pairs"]["pairs"] > 0 and r2["dpo_training"]["steps"] == 2
    pairs = read_jsonl(run / "dpo_st" / "r2" / "pairs.jsonl")
    r1_texts = {x["text"] for x in read_jsonl(run / "dpo_st" / "r1" / "dpo_samples.jsonl")}
    r2_texts = {x["text"] for x in read_jsonl(run / "dpo_st" / "r2" / "dpo_samples.jsonl")}
    assert {p["rejected"][0]["content"] for p in pairs} <= r1_texts | r2_texts
    assert max(sum(p["id"] == q for p in pairs) for q in {p["id"] for p in pairs}) <= 3
    # the SFT data hold the gold rationale of every training question plus pseudo-labels
    sft_data = read_jsonl(run / "dpo_st" / "r2" / "sft_data.jsonl")
    assert sum(x["gold"] for x in sft_data) == 6
    # one warm-up, shared
    assert [s for s in state["done"] if s.startswith("warmup")] == ["warmup.sft", "warmup.eval"]
    # the calculator's effect: warm-up and each arm's final model, both ways
    calc = metrics["calculator"]
    assert set(calc) == {"warmup", "dpo_st.r2", "self_training.r2"}
    assert set(calc["warmup"]["in_domain"]) == {"with", "without", "n"}
    # report and plot
    report = (run / "report.md").read_text()
    assert "| DPO-ST | 2 |" in report and "| self-training | 2 |" in report
    acc = metrics["dpo_st"]["rounds"]["2"]["eval"]["in_domain"]["accuracy"]
    assert f"{100 * acc:.1f}" in report
    assert "with / without" in report
    png = run / "accuracy_by_round.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    written = {p.name: p.read_bytes() for p in (run / "report.md", png)}
    assert {p.name: p.read_bytes() for p in rebuild(run)} == written  # `selftrain report`


def test_resume_mid_round_continues_at_that_stage(tiny_dir, tmp_path, monkeypatch, answers):
    recipe = _recipe(tiny_dir, rounds=2, baselines=[], calculator_ablation=False)
    run = tmp_path / "run"
    real_generate = _with_correct_paths(stage_sample.generate)
    calls = {"n": 0}

    def die_in_r2_sft_samples(student, items, params, engine=None):
        # DPO-step samples have k=2 and SFT-step samples k=2 too: count the sampling stages
        calls["n"] += 1
        it = real_generate(student, items, params, engine)
        if calls["n"] == 4:  # r1 dpo, r1 sft, r2 dpo, then r2 sft: die after a batch
            yield next(it)
            raise KeyboardInterrupt
        yield from it

    monkeypatch.setattr(stage_sample, "generate", die_in_r2_sft_samples)
    with pytest.raises(KeyboardInterrupt):
        dpo_st.run(recipe, run)
    state = json.loads((run / "state.json").read_text())
    assert "dpo_st.r2.dpo" in state["done"] and "dpo_st.r2.sft_samples" not in state["done"]
    partial = read_jsonl(run / "dpo_st" / "r2" / "sft_samples.jsonl")
    assert 0 < len(partial) < 12
    mtimes = {
        p: p.stat().st_mtime_ns
        for p in [
            run / "warmup" / "model" / "adapter_model.safetensors",
            run / "dpo_st" / "r1" / "sft" / "model" / "adapter_model.safetensors",
            run / "dpo_st" / "r2" / "dpo" / "model" / "adapter_model.safetensors",
            run / "dpo_st" / "r2" / "dpo_samples.jsonl",
            run / "dpo_st" / "r1" / "sft_data.jsonl",
        ]
    }
    seconds = dict(state["seconds"])

    trained, sampled = [], []
    real_sft = stage_sft.train_sft

    def count_sft(*a, **k):
        trained.append(k["label"])
        return real_sft(*a, **k)

    def count_gen(student, items, params, engine=None):
        sampled.append(len(items))
        return real_generate(student, items, params, engine)

    def no_dpo(*a, **k):
        raise AssertionError("DPO ran again")

    monkeypatch.setattr(stage_sample, "generate", count_gen)
    monkeypatch.setattr(stage_sft, "train_sft", count_sft)
    monkeypatch.setattr(stage_dpo, "train_dpo", no_dpo)
    metrics = dpo_st.run(recipe, run)
    assert trained == ["dpo_st.r2 sft"]  # only the stage after the kill
    assert len(sampled) == 1 and sampled[0] == 6 - len(partial) // 2  # the questions left
    for p, t in mtimes.items():
        assert p.stat().st_mtime_ns == t, p
    samples = read_jsonl(run / "dpo_st" / "r2" / "sft_samples.jsonl")
    assert samples[: len(partial)] == partial and len(samples) == 12
    state = json.loads((run / "state.json").read_text())
    for stage, secs in seconds.items():
        if stage != "dpo_st.r2.sft_samples":  # the interrupted stage adds up its attempts
            assert state["seconds"][stage] == secs, stage
    assert metrics["dpo_st"]["rounds"]["2"]["eval"]["in_domain"]["n"] == 3

    # a third run recomputes nothing
    monkeypatch.setattr(stage_sft, "train_sft", lambda *a, **k: pytest.fail("sft ran again"))
    monkeypatch.setattr(stage_sample, "generate", lambda *a, **k: pytest.fail("sampled again"))
    assert dpo_st.run(recipe, run)["dpo_st"] == metrics["dpo_st"]


def test_answer_only_questions_learn_from_self_samples_alone(
    tiny_dir, tmp_path, monkeypatch, answers
):
    monkeypatch.setattr(stage_sample, "generate", _with_correct_paths(stage_sample.generate))
    recipe = _recipe(tiny_dir, rounds=1, gold_questions=4, calculator_ablation=False)
    run = tmp_path / "run"
    metrics = dpo_st.run(recipe, run)
    train = [x["id"] for x in read_jsonl(run / "data" / "train.jsonl")]
    gold_ids, answer_only = set(train[:4]), set(train[4:])
    assert metrics["warmup"]["training"]["examples"] == 4  # the warm-up sees the gold only
    for arm in ["dpo_st", "self_training"]:
        m = metrics[arm]["rounds"]["1"]
        data = read_jsonl(run / arm / "r1" / "sft_data.jsonl")
        assert {x["id"] for x in data if x["gold"]} == gold_ids
        # each answer-only question got the wrapped correct path as a pseudo-label
        assert {x["id"] for x in data if not x["gold"]} >= answer_only
        assert m["pseudo_labels"]["answer_only_covered"] == 2
        assert m["pseudo_labels"]["answer_only_questions"] == 2
    pairs = read_jsonl(run / "dpo_st" / "r1" / "pairs.jsonl")
    assert all(p["chosen_from"] == "self" for p in pairs if p["id"] in answer_only)
    assert "(2/2 answer-only)" in (run / "report.md").read_text()


def test_gold_questions_above_n_questions_is_refused(tiny_dir):
    with pytest.raises(ValueError, match="gold_questions"):
        _recipe(tiny_dir, gold_questions=7)


def test_self_training_method_has_no_dpo_step_and_continue_variant(tiny_dir, tmp_path):
    recipe = _recipe(
        tiny_dir, rounds=1, baselines=[], sft_init="previous", calculator_ablation=False
    )
    recipe = recipe.model_copy(update={"method": "self_training"})
    run = tmp_path / "run"
    metrics = dpo_st.run(recipe, run)
    assert set(metrics["self_training"]["rounds"]["1"]) >= {"sft_samples", "eval", "sft_training"}
    assert metrics["self_training"]["rounds"]["1"]["sft_training"]["from"] == "previous"
    assert "dpo_st" not in metrics
    assert not any(
        s.startswith("dpo_st.") for s in json.loads((run / "state.json").read_text())["done"]
    )


def test_cli_runs_dpo_st_recipe(tiny_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from selftrain.cli import app

    recipe = _recipe(tiny_dir, rounds=1, baselines=[], calculator_ablation=False)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))  # a dump reloads as is
    out = CliRunner().invoke(app, ["run", str(path), "--run-dir", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "DPO-ST" in out.output and (tmp_path / "run" / "report.md").exists()
