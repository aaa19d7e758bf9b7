"""One error path: a failure the user can fix is one line and exit status 2; anything else is
an internal error with exit status 1; a traceback only with --debug."""

from __future__ import annotations

import errno

import pytest
from typer.testing import CliRunner

from selftrain.cli import app
from selftrain.errors import describe
from selftrain.pipeline import srit


def _run(tmp_path, *args: str, env: dict | None = None):
    return CliRunner().invoke(
        app, [*args, "run", "--run-dir", str(tmp_path / "run")], env=env or {}
    )


@pytest.mark.parametrize(
    ("error", "code", "message"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "runs/x/samples.jsonl"),
            2,
            "error: runs/x/samples.jsonl: No space left on device (the disk is full: free some "
            "space, then rerun the same command (it resumes where it stopped))",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "runs/x/state.json"),
            2,
            "error: runs/x/state.json: Permission denied (no permission:",
        ),
        (ValueError("task 'x' has no split(s) ['test']"), 2, "error: task 'x' has no split"),
        (
            RuntimeError("boom"),
            1,
            "error: internal error: RuntimeError: boom (rerun with --debug for the traceback",
        ),
        (KeyboardInterrupt(), 130, "error: interrupted; rerun the same command to resume"),
    ],
)
def test_every_failure_is_one_line_with_its_exit_status(
    tmp_path, monkeypatch, error, code, message
):
    def fail(recipe, run_dir):
        raise error

    monkeypatch.setattr(srit, "run", fail)
    out = _run(tmp_path)
    assert out.exit_code == code, out.output
    assert out.output.startswith(message), out.output
    assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1


@pytest.mark.parametrize("how", [("--debug",), ()])
def test_debug_raises_the_error_itself(tmp_path, monkeypatch, how):
    def fail(recipe, run_dir):
        raise RuntimeError("boom")

    monkeypatch.setattr(srit, "run", fail)
    env = {} if how else {"SELFTRAIN_DEBUG": "1"}
    out = _run(tmp_path, *how, env=env)
    assert isinstance(out.exception, RuntimeError) and str(out.exception) == "boom"


def test_a_bad_model_path_leaves_no_run_directory(tmp_path):
    """The student loads before the run directory is made: fixing the path afterwards is not
    refused as 'a different recipe'."""
    out = CliRunner().invoke(
        app,
        ["run", "--run-dir", str(tmp_path / "run"), "--set", f"student.model={tmp_path}/nope"],
    )
    assert out.exit_code == 2 and "Traceback" not in out.output, out.output
    assert "nope" in out.output
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_named(tmp_path, tiny_dir):
    (tmp_path / "run").write_text("x")
    out = CliRunner().invoke(
        app,
        [
            "run",
            "--run-dir",
            str(tmp_path / "run"),
            "--set",
            f"student.model={tiny_dir}",
            "--set",
            "task.args.n_test=4",
        ],
    )
    assert out.exit_code == 2, out.output
    assert f"error: {tmp_path / 'run'} is a file, not a run directory" in out.output


def test_an_os_error_without_a_file_still_reads_well():
    message, code = describe(OSError(errno.ENOSPC, "No space left on device"))
    assert code == 2 and message.startswith("No space left on device (the disk is full")
