"""The SRIT recipe end to end on a tiny model: artefacts, metrics shape, resume, empty pairs."""

import json

import pytest

from selftrain.config import load_recipe
from selftrain.io import read_jsonl
from selftrain.pipeline import srit
from selftrain.pipeline.report import rebuild
from selftrain.rundir import RunDirError
from selftrain.stages import dpo as stage_dpo
from selftrain.stages import sample as stage_sample
from selftrain.stages import sft as stage_sft


def _recipe(tiny_dir, **extra):
    small = {
        "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 40, "n_validation": 10, "n_test": 8}},
        "teacher": {"n_questions": 12},
        "sft": {
            "max_epochs": 1,
            "eval_every": 1,
            "patience": 1,
            "val_questions": 4,
            "max_new_tokens": 8,
            "batch_size": 4,
        },
        "sampling": {
            "n_questions": 6,
            "offset": 0,
            "k": 2,
            "max_new_tokens": 8,
            "batch_size": 8,
        },
        "rft": {"with_demos": False},  # the RFT + DPO mix the tests were written for
        "dpo": {"enabled": True, "batch_size": 2},
        "eval": {"n": 5, "max_new_tokens": 8, "splits": ["in_domain", "out_of_domain"]},
    }
    for key, value in extra.items():
        small[key] = {**small.get(key, {}), **value}
    return load_recipe(None, small)


def test_end_to_end_writes_every_artefact_and_metrics(tiny_dir, tmp_path):
    run = tmp_path / "run"
    metrics = srit.run(_recipe(tiny_dir), run)
    for name in [
        "recipe.yaml",
        "demos.jsonl",
        "samples.jsonl",
        "pairs.jsonl",
        "log.txt",
        "sft/model/adapter_model.safetensors",
        "dpo/model/adapter_model.safetensors",
        "sft_more/model/adapter_model.safetensors",
        "eval/dpo/in_domain.jsonl",
    ]:
        assert (run / name).exists(), name
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    for model in ["base", "sft", "sft_more", "dpo"]:
        for split in ["in_domain", "out_of_domain"]:
            r = metrics[model][split]
            assert r["n"] == 5 and 0 <= r["accuracy"] <= 1
    # a random model gets everything wrong, so every chosen answer is the teacher's
    assert metrics["pairs"]["pairs"] == metrics["pairs"]["chosen_from_teacher"] > 0
    assert metrics["sft_more_training"]["steps"] == metrics["dpo_training"]["steps"]
    samples = read_jsonl(run / "samples.jsonl")
    assert len(samples) == 6 * 2
    assert {"sft", "dpo", "samples"} <= set(metrics["stage_seconds"])
    # the report and its plots; `selftrain report` rebuilds the same bytes
    report = (run / "report.md").read_text()
    assert f"| dpo | {100 * metrics['dpo']['in_domain']['accuracy']:.1f} [" in report
    written = {p.name: p.read_bytes() for p in [run / "report.md", *run.glob("*.png")]}
    assert set(written) == {"report.md", "accuracy.png", "sft_validation.png",
                            "dpo_training.png", "pass_at_k.png"}  # fmt: skip
    assert {p.name: p.read_bytes() for p in rebuild(run)} == written


def test_resume_continues_where_it_stopped(tiny_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    recipe = _recipe(tiny_dir)
    real_generate, real_dpo, real_sft = (
        stage_sample.generate,
        stage_dpo.train_dpo,
        stage_sft.train_sft,
    )

    def generate_then_die(
        student, items, params, engine=None
    ):  # killed after the first sampling batch
        it = real_generate(student, items, params, engine)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(stage_sample, "generate", generate_then_die)
    with pytest.raises(KeyboardInterrupt):
        srit.run(recipe, run)
    partial = read_jsonl(run / "samples.jsonl")
    assert 0 < len(partial) < 12
    sft_mtime = (run / "sft/model/adapter_model.safetensors").stat().st_mtime_ns

    # second attempt: sampling resumes; DPO dies
    monkeypatch.setattr(stage_sample, "generate", real_generate)
    monkeypatch.setattr(stage_sft, "train_sft", _must_not_run("sft"))  # finished in attempt 1
    monkeypatch.setattr(
        stage_dpo, "train_dpo", lambda *a, **k: (_ for _ in ()).throw(OSError("kill"))
    )
    with pytest.raises(OSError):
        srit.run(recipe, run)
    samples = read_jsonl(run / "samples.jsonl")
    assert samples[: len(partial)] == partial
    counts = {}
    for r in samples:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    assert len(counts) == 6 and set(counts.values()) == {2}  # none missing, none twice

    # third attempt: nothing finished is recomputed
    monkeypatch.setattr(stage_dpo, "train_dpo", real_dpo)
    monkeypatch.setattr(stage_sft, "train_sft", real_sft)  # the sft_more control still has to run
    calls = []
    monkeypatch.setattr(
        stage_sample, "generate", lambda *a, **k: calls.append(1) or real_generate(*a, **k)
    )
    metrics = srit.run(recipe, run)
    assert (run / "sft/model/adapter_model.safetensors").stat().st_mtime_ns == sft_mtime
    assert read_jsonl(run / "samples.jsonl") == samples
    assert calls == []  # sampling was done; evaluation goes through evaluation.generate
    assert "dpo" in metrics and "sft_more" in metrics


def _must_not_run(name):
    def fail(*a, **k):
        raise AssertionError(f"{name} ran again")

    return fail


def test_empty_pair_set_still_finishes_its_evaluation(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, pairs={"teacher_fallback": False})
    metrics = srit.run(recipe, tmp_path / "run")
    assert "no preference pairs" in metrics["dpo"]["skipped"]
    assert metrics["pairs"]["pairs"] == 0
    assert metrics["sft"]["in_domain"]["n"] == 5
    assert "sft_more" not in metrics


def test_a_run_dir_of_another_recipe_is_refused(tiny_dir, tmp_path):
    run = tmp_path / "run"
    srit.run(_recipe(tiny_dir, eval={"evaluate_base": False}, dpo={"max_steps": 1}), run)
    with pytest.raises(RunDirError, match=r"dpo\.beta"):
        srit.run(
            _recipe(tiny_dir, eval={"evaluate_base": False}, dpo={"max_steps": 1, "beta": 0.5}), run
        )


def test_cli_runs_a_recipe_file_and_resumes(tiny_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from selftrain.cli import app

    recipe = _recipe(tiny_dir, eval={"evaluate_base": False}, dpo={"max_steps": 1})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json")))
    run = tmp_path / "run"
    first = CliRunner().invoke(app, ["run", str(path), "--run-dir", str(run)])
    assert first.exit_code == 0, first.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"sft", "dpo", "sft_more"} <= set(metrics)
    again = CliRunner().invoke(app, ["run", str(path), "--run-dir", str(run)])
    assert again.exit_code == 0
    assert (
        json.loads((run / "metrics.json").read_text())["stage_seconds"] == metrics["stage_seconds"]
    )


def test_cot_vs_direct_samples_both_styles(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, pairs={"policy": "cot_vs_direct"}, eval={"evaluate_base": False})
    srit.run(recipe, tmp_path / "run")
    samples = read_jsonl(tmp_path / "run" / "samples.jsonl")
    cot = [r for r in samples if r["style"] == "cot"]
    direct = [r for r in samples if r["style"] == "direct"]
    assert len(cot) == 6 * 2 and len(direct) == 6  # k CoT paths and one direct answer each
    assert {r["id"] for r in direct} == {r["id"] for r in cot}


def test_metrics_time_every_stage(tiny_dir, tmp_path):
    run = tmp_path / "run"
    srit.run(_recipe(tiny_dir, eval={"evaluate_base": False}, dpo={"max_steps": 1}), run)
    metrics = json.loads((run / "metrics.json").read_text())
    state = json.loads((run / "state.json").read_text())
    assert metrics["stage_seconds"] == state["seconds"]
    assert "eval_sft_more" in metrics["stage_seconds"]


def test_sampling_past_the_train_split_is_an_error(tiny_dir, tmp_path):
    recipe = _recipe(tiny_dir, sampling={"offset": 40}, eval={"evaluate_base": False})
    with pytest.raises(ValueError, match=r"sampling\.offset"):
        srit.run(recipe, tmp_path / "run")


def test_rft_then_dpo_and_paired_comparisons(tiny_dir, tmp_path, monkeypatch):
    from selftrain.tasks.arithmetic import ArithmeticTask

    # a random model is never right: call every other path right, so RFT has data
    monkeypatch.setattr(ArithmeticTask, "is_correct", lambda self, text, e: len(text) % 2 == 0)
    recipe = _recipe(
        tiny_dir,
        rft={"enabled": True, "batch_size": 2, "epochs": 1, "paths_per_easy_question": 2},
        eval={"evaluate_base": False, "control_n": 3},
    )
    run = tmp_path / "run"
    metrics = srit.run(recipe, run)
    kept = read_jsonl(run / "rft.jsonl")
    samples = read_jsonl(run / "samples.jsonl")
    right = {(r["id"], r["text"]) for r in samples if r["correct"]}
    assert kept and all((r["id"], r["text"]) in right for r in kept)
    assert metrics["rft_training"]["self_paths"] == len(kept)
    assert metrics["rft_training"]["steps"] == -(-len(kept) // 2)
    assert (run / "rft/model/adapter_model.safetensors").exists()
    assert "rft" not in metrics  # evaluated: the last stage only
    steps = metrics["rft_training"]["steps"] + metrics["dpo_training"]["steps"]
    assert metrics["sft_more_training"]["steps"] == steps
    assert metrics["sft_more"]["in_domain"]["n"] == 3
    cmp = metrics["compare"]
    assert set(cmp) == {"dpo_vs_sft", "dpo_vs_sft_more", "sft_more_vs_sft"}
    assert cmp["dpo_vs_sft"]["in_domain"]["n"] == 5
    assert cmp["dpo_vs_sft_more"]["out_of_domain"]["n"] == 3
    assert 0 <= cmp["dpo_vs_sft"]["in_domain"]["p_value"] <= 1
    assert "peak_rss_mb" in metrics and metrics["peak_rss_mb"]["rft"] > 0


def test_rft_alone_is_the_self_refined_student(tiny_dir, tmp_path, monkeypatch):
    from selftrain.tasks.arithmetic import ArithmeticTask

    monkeypatch.setattr(ArithmeticTask, "is_correct", lambda self, text, e: len(text) % 2 == 0)
    recipe = _recipe(
        tiny_dir,
        rft={"enabled": True, "batch_size": 4},
        dpo={"enabled": False},
        eval={"evaluate_base": False},
    )
    metrics = srit.run(recipe, tmp_path / "run")
    assert "dpo_training" not in metrics and metrics["rft"]["in_domain"]["n"] == 5
    assert metrics["sft_more_training"]["steps"] == metrics["rft_training"]["steps"]
    assert "rft_vs_sft" in metrics["compare"]


def test_ablation_arms_start_from_the_runs_sft_model(tiny_dir, tmp_path, monkeypatch, capsys):
    import importlib.util
    from pathlib import Path

    from selftrain.tasks.arithmetic import ArithmeticTask

    monkeypatch.setattr(ArithmeticTask, "is_correct", lambda self, text, e: len(text) % 2 == 0)
    run = tmp_path / "run"
    srit.run(_recipe(tiny_dir, rft={"enabled": True, "batch_size": 4}), run)
    path = Path(__file__).parents[2] / "experiments" / "ablation.py"
    spec = importlib.util.spec_from_file_location("ablation", path)
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    assert ablation.main([str(run), "--arms", "dpo,rft+dpo"]) == 0
    arm = run / "ablation" / "dpo"
    # the arm reused the run's stage-1 model and samples, and trained DPO from that model
    assert (arm / "sft/model/adapter_model.safetensors").read_bytes() == (
        run / "sft/model/adapter_model.safetensors"
    ).read_bytes()
    assert read_jsonl(arm / "samples.jsonl") == read_jsonl(run / "samples.jsonl")
    metrics = json.loads((arm / "metrics.json").read_text())
    assert "rft_training" not in metrics and metrics["dpo_training"]["steps"] > 0
    assert not (run / "ablation" / "rft+dpo").exists()  # the run's own recipe: reused
    out = capsys.readouterr().out
    assert "| dpo |" in out and "| rft+dpo |" in out and "p=" in out


def test_a_deleted_checkpoint_is_rebuilt_the_same_and_nothing_after_it_redone(
    tiny_dir, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    recipe = _recipe(tiny_dir, rft={"enabled": False})
    srit.run(recipe, run)
    weights = run / "sft/model/adapter_model.safetensors"
    before = weights.read_bytes()
    weights.unlink()
    monkeypatch.setattr(stage_dpo, "train_dpo", _must_not_run("dpo"))
    srit.run(recipe, run)
    logged = (run / "log.txt").read_text()
    assert "stage sft: its output sft/model/adapter_model.safetensors is missing" in logged
    assert weights.read_bytes() == before  # retrained to the same bytes: dpo stays done


def test_lost_metrics_do_not_change_the_control_steps(tiny_dir, tmp_path, monkeypatch):
    """The sft_more control trains as many steps as stage 2 took, read from the stage record,
    not from metrics.json."""
    run = tmp_path / "run"
    recipe = _recipe(tiny_dir, rft={"enabled": False})
    real = stage_sft.train_sft

    def die_in_the_control(student, data, cfg, **kw):
        if kw.get("label") == "sft_more":
            raise KeyboardInterrupt
        return real(student, data, cfg, **kw)

    monkeypatch.setattr(stage_sft, "train_sft", die_in_the_control)
    with pytest.raises(KeyboardInterrupt):
        srit.run(recipe, run)
    (run / "metrics.json").unlink()
    monkeypatch.setattr(stage_sft, "train_sft", real)
    metrics = srit.run(recipe, run)
    assert metrics["sft_more_training"]["steps"] == metrics["dpo_training"]["steps"] > 0


def test_a_lost_state_file_redoes_the_run_without_duplicating_anything(tiny_dir, tmp_path):
    run = tmp_path / "run"
    recipe = _recipe(tiny_dir, rft={"enabled": False})
    first = srit.run(recipe, run)
    files = {p: p.read_bytes() for p in run.rglob("*.jsonl")}
    (run / "state.json").unlink()
    again = srit.run(recipe, run)
    assert {p: p.read_bytes() for p in run.rglob("*.jsonl")} == files  # no split doubled
    for model in ("sft", "dpo", "sft_more"):
        assert again[model] == first[model]
