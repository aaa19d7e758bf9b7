"""The run directory: one run at a time (a lock naming its holder); verified stages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from selftrain.config import load_recipe
from selftrain.io import write_jsonl_atomic, write_text_atomic
from selftrain.rundir import RunDir, RunDirError


def test_a_second_run_in_the_same_directory_is_refused_naming_the_first(tmp_path):
    recipe = load_recipe()
    first = RunDir(tmp_path, recipe)
    with pytest.raises(RunDirError, match=rf"in use by process {os.getpid()} on "):
        RunDir(tmp_path, recipe)
    first.close()
    with RunDir(tmp_path, recipe):  # free again
        pass


def test_another_process_is_refused_while_a_run_holds_the_directory(tmp_path):
    script = (
        "import sys\n"
        "from selftrain.config import load_recipe\n"
        "from selftrain.rundir import RunDir, RunDirError\n"
        "try:\n"
        "    RunDir(sys.argv[1], load_recipe())\n"
        "except RunDirError as e:\n"
        "    print(e)\n"
        "    sys.exit(2)\n"
    )
    with RunDir(tmp_path, load_recipe()):
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True)
        assert out.returncode == 2, out.stderr.decode()
        assert f"in use by process {os.getpid()}" in out.stdout.decode()
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_a_refused_recipe_leaves_the_directory_unlocked(tmp_path):
    with RunDir(tmp_path, load_recipe()):
        pass
    with pytest.raises(RunDirError, match="different recipe"):
        RunDir(tmp_path, load_recipe(None, {"seed": 7}))
    with RunDir(tmp_path, load_recipe()):  # the failed attempt released its lock
        pass


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"seconds": {}}', "not a run state"),
        ("[1, 2]", "not a run state"),
        ('{"done": "sft"}', "not a run state"),
        ('{"done": [', "invalid JSON"),
        (b"\xff\xfe", "delete"),
    ],
)
def test_a_broken_state_file_is_named_with_the_repair(tmp_path, text, message):
    with RunDir(tmp_path, load_recipe()):
        pass
    state = tmp_path / "state.json"
    if isinstance(text, bytes):
        state.write_bytes(text)
    else:
        state.write_text(text)
    with pytest.raises(RunDirError, match=message) as e:
        RunDir(tmp_path, load_recipe())
    assert str(state) in str(e.value) and "delete" in str(e.value)


def test_a_broken_saved_recipe_is_named(tmp_path):
    with RunDir(tmp_path, load_recipe()):
        pass
    (tmp_path / "recipe.yaml").write_text("name: [unclosed\n")
    with pytest.raises(RunDirError, match=r"recipe\.yaml: not a readable recipe"):
        RunDir(tmp_path, load_recipe())
    with RunDir(tmp_path / "other", load_recipe()):  # and nothing else is locked
        pass


def _two_stages(path, log: list[str]) -> dict:
    """A run of two stages: ``a`` writes a.jsonl and returns a count, ``b`` writes b/out.txt
    from it; ``log`` gets the stages that ran."""
    with RunDir(path, load_recipe()) as rd:
        if not rd.done("a"):
            with rd.stage("a") as result:
                log.append("a")
                write_jsonl_atomic(rd / "a.jsonl", [{"id": i} for i in range(3)])
                rd.put(("a", "stats"), {"records": 3})
                result["count"] = 3
        count = rd.result("a")["count"]
        if not rd.done("b"):
            with rd.stage("b"):
                log.append("b")
                write_text_atomic(
                    rd / "b" / "out.txt", f"{count} and {(rd / 'a.jsonl').read_text()}"
                )
                rd.set_metric("b", {"bytes": count})
        return rd.metrics


def test_a_done_stage_records_its_files_counts_and_hashes(tmp_path):
    _two_stages(tmp_path, [])
    state = json.loads((tmp_path / "state.json").read_text())
    a = state["stages"]["a"]
    assert set(a["outputs"]) == {"a.jsonl"}
    assert a["outputs"]["a.jsonl"]["records"] == 3
    assert (
        a["outputs"]["a.jsonl"]["sha256"]
        == hashlib.sha256((tmp_path / "a.jsonl").read_bytes()).hexdigest()
    )
    assert a["result"] == {"count": 3}
    assert set(state["stages"]["b"]["outputs"]) == {"b/out.txt"}
    assert "running" not in state


@pytest.mark.parametrize("damage", ["cut", "delete", "edit"])
def test_a_torn_missing_or_changed_output_redoes_its_stage_and_only_it(tmp_path, damage):
    _two_stages(tmp_path, [])
    before = (tmp_path / "a.jsonl").read_bytes()
    target = tmp_path / "a.jsonl"
    if damage == "cut":
        target.write_bytes(before[: len(before) // 2])  # a torn file: cut mid-line
    elif damage == "delete":
        target.unlink()
    else:
        target.write_bytes(before.replace(b"1", b"7"))  # same size, other content
    ran: list[str] = []
    _two_stages(tmp_path, ran)
    assert ran == ["a"]  # the same output again: b's input is unchanged, b is not redone
    logged = (tmp_path / "log.txt").read_text()
    assert "stage a: its output a.jsonl" in logged and "redone" in logged
    assert target.read_bytes() == before
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["done"] == ["a", "b"]


def test_a_touched_but_unchanged_output_is_not_redone(tmp_path):
    _two_stages(tmp_path, [])
    os.utime(tmp_path / "a.jsonl", (0, 0))  # the modification time alone changed
    ran: list[str] = []
    _two_stages(tmp_path, ran)
    assert ran == []


def test_a_redone_stage_with_other_outputs_redoes_the_stages_after_it(tmp_path, monkeypatch):
    _two_stages(tmp_path, [])
    (tmp_path / "a.jsonl").unlink()
    import selftrain.rundir as rundir_module

    real = rundir_module.describe

    def other(path, st):  # the redone a.jsonl hashes differently (as on a nondeterministic GPU)
        d = real(path, st)
        return {**d, "sha256": "0" * 64} if path.name == "a.jsonl" else d

    monkeypatch.setattr(rundir_module, "describe", other)
    ran: list[str] = []
    _two_stages(tmp_path, ran)
    assert ran == ["a", "b"]


def test_lost_metrics_are_rebuilt_from_the_stage_records(tmp_path):
    metrics = _two_stages(tmp_path, [])
    for broken in (None, "{not json"):
        if broken is None:
            (tmp_path / "metrics.json").unlink()
        else:
            (tmp_path / "metrics.json").write_text(broken)
        ran: list[str] = []
        again = _two_stages(tmp_path, ran)
        assert ran == [] and again == metrics
        assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
        assert "rebuilt from state.json" in (tmp_path / "log.txt").read_text()
