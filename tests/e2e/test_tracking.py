"""Experiment trackers: a tiny SRIT run with ``report_to: tensorboard`` leaves event files whose
scalars match the run's own records; ``none`` writes nothing and imports no tracker."""

import json
import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from selftrain import tracking
from selftrain.config import default_recipe_path, load_recipe
from selftrain.pipeline import srit
from selftrain.rundir import RunDir, RunDirError


def _recipe(tiny_dir, report_to):
    return load_recipe(
        None,
        {
            "report_to": report_to,
            "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
            "task": {"name": "arithmetic", "args": {"n_train": 30, "n_validation": 6, "n_test": 4}},
            "teacher": {"n_questions": 8},
            "sft": {
                "max_epochs": 1,
                "eval_every": 1,
                "patience": 2,
                "val_questions": 3,
                "max_new_tokens": 6,
                "batch_size": 4,
            },
            "sampling": {
                "n_questions": 4,
                "offset": 0,
                "k": 2,
                "max_new_tokens": 6,
                "batch_size": 8,
            },
            "rft": {"enabled": False},
            "dpo": {"enabled": True, "batch_size": 2},
            "sft_more": False,
            "eval": {
                "n": 3,
                "max_new_tokens": 6,
                "splits": ["in_domain"],
                "evaluate_base": False,
            },
        },
    )


def _scalars(run) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(run / "tracking" / "tensorboard"))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def _steps(series):
    return [step for step, _ in series]


def _values(series):
    return [value for _, value in series]


def test_tensorboard_events_hold_the_runs_scalars(tiny_dir, tmp_path):
    run = tmp_path / "run"
    metrics = srit.run(_recipe(tiny_dir, ["tensorboard"]), run)
    got = _scalars(run)

    sft_steps = metrics["sft_training"]["steps"]
    assert [s for s, _ in got["sft/loss"]] == list(range(1, sft_steps + 1))
    assert all(v > 0 for _, v in got["sft/loss"]) and len(got["sft/lr"]) == sft_steps
    history = json.loads((run / "sft" / "history.json").read_text())
    assert [(s, round(v, 4)) for s, v in got["sft/validation/accuracy"]] == [
        (h["step"], h["accuracy"]) for h in history
    ]
    for s, low in got["sft/validation/ci95_low"]:
        assert (
            low
            <= dict(got["sft/validation/accuracy"])[s]
            <= dict(got["sft/validation/ci95_high"])[s]
        )

    dpo = json.loads((run / "dpo" / "history.json").read_text())
    assert metrics["dpo_training"]["steps"] == len(dpo) > 0
    for name in ("loss", "margin", "reward_accuracy", "chosen_logp_change", "rejected_logp_change"):
        assert _steps(got[f"dpo/{name}"]) == [h["step"] for h in dpo]
        assert _values(got[f"dpo/{name}"]) == pytest.approx([h[name] for h in dpo], rel=1e-6)
    assert len(got["dpo/lr"]) == len(dpo)

    ev = metrics["dpo"]["in_domain"]
    assert _values(got["eval/dpo/in_domain/accuracy"]) == pytest.approx([ev["accuracy"]])
    assert _values(got["eval/dpo/in_domain/ci95_high"]) == pytest.approx([ev["ci95"][1]])
    assert got["eval/sft/in_domain/n"] == [(0, metrics["sft"]["in_domain"]["n"])]

    sampled = metrics["samples"]
    assert _values(got["samples/pass@k"]) == pytest.approx([sampled["pass@k"]])
    assert _values(got["samples/path_accuracy"]) == pytest.approx([sampled["path_accuracy"]])
    assert _values(got["samples/tokens_per_s"])[0] > 0
    seconds = metrics["stage_seconds"]
    assert {f"stage_seconds/{s}" for s in seconds} <= set(got)
    assert _values(got["stage_seconds/dpo"]) == pytest.approx([seconds["dpo"]])

    state = json.loads((run / "state.json").read_text())
    outputs = [rel for st in state["stages"].values() for rel in st["outputs"]]
    assert outputs and not any(rel.startswith("tracking/") for rel in outputs)


def test_none_writes_nothing_and_imports_no_tracker(tiny_dir, tmp_path, monkeypatch):
    for name in ("torch.utils.tensorboard", "tensorboardX", "wandb", "trackio"):
        monkeypatch.setitem(sys.modules, name, None)  # importing any of them now fails
    run = tmp_path / "run"
    recipe = _recipe(tiny_dir, "none")
    assert recipe.report_to == []
    srit.run(
        recipe.model_copy(update={"dpo": recipe.dpo.model_copy(update={"enabled": False})}), run
    )
    assert (run / "metrics.json").exists() and not (run / "tracking").exists()


def test_a_missing_tracker_package_names_the_pip_command(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n)
    )
    with pytest.raises(tracking.TrackerError, match=r"'wandb'.*pip install wandb"):
        tracking.backends(["tensorboard", "wandb"])
    assert tracking.backends(["all"]) == [
        b for b in ("tensorboard", "trackio") if real(b) is not None
    ]


def test_a_missing_tracker_package_stops_a_run_before_the_model_loads(
    tiny_dir, tmp_path, monkeypatch
):
    """Both pipelines check report_to's packages before loading the student: nothing is loaded
    and no run directory is made."""
    from selftrain.models import Student
    from selftrain.pipeline import dpo_st

    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(
        tracking.importlib.util, "find_spec", lambda n: None if n == "wandb" else real(n)
    )

    def no_load(*args, **kwargs):
        raise AssertionError("the student loaded before the tracker check")

    monkeypatch.setattr(Student, "load", no_load)
    with pytest.raises(tracking.TrackerError, match="pip install wandb"):
        srit.run(_recipe(tiny_dir, "wandb"), tmp_path / "srit")
    dpo_recipe = load_recipe(
        default_recipe_path().with_name("dpo_st.yaml"),
        {"report_to": "wandb", "student": {"model": str(tiny_dir)}},
    )
    with pytest.raises(tracking.TrackerError, match="pip install wandb"):
        dpo_st.run(dpo_recipe, tmp_path / "dpo_st")
    assert not (tmp_path / "srit").exists() and not (tmp_path / "dpo_st").exists()


def test_report_to_takes_transformers_forms():
    assert load_recipe(None, {"report_to": "tensorboard"}).report_to == ["tensorboard"]
    assert load_recipe(None, {"report_to": ["none"]}).report_to == []
    assert load_recipe(None, {}).report_to == []
    with pytest.raises(ValueError, match="report_to"):
        load_recipe(None, {"report_to": ["none", "wandb"]})
    with pytest.raises(ValueError, match=r"report_to\.0"):
        load_recipe(None, {"report_to": "tensorbord"})


def test_a_run_resumes_with_another_report_to(tmp_path):
    with RunDir(tmp_path, load_recipe(None, {"report_to": "none"})) as rd, rd.stage("a"):
        tracking.log({"x": 1.0}, 1)  # no tracker: nothing written
    assert not (tmp_path / "tracking").exists()
    with RunDir(tmp_path, load_recipe(None, {"report_to": "tensorboard"})) as rd, rd.stage("b"):
        tracking.log({"x": 2.0}, 3)
    assert _scalars(tmp_path)["b/x"] == [(3, 2.0)]
    assert set(_scalars(tmp_path)) == {"b/x", "stage_seconds/b"}
    with pytest.raises(RunDirError, match="seed"):
        RunDir(tmp_path, load_recipe(None, {"report_to": "tensorboard", "seed": 1}))


def test_a_refused_second_run_leaves_the_first_runs_trackers_open(tmp_path):
    recipe = load_recipe(None, {"report_to": "tensorboard"})
    with RunDir(tmp_path, recipe) as rd:
        with pytest.raises(RunDirError, match="in use"):
            RunDir(tmp_path, recipe)
        with rd.stage("a"):
            tracking.log({"x": 1.0}, 1)
    assert _scalars(tmp_path)["a/x"] == [(1, 1.0)]
