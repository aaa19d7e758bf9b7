"""The run directory: one run at a time (a lock naming its holder)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from selftrain.config import load_recipe
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
