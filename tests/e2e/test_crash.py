"""The crash test: kill SRIT, DPO-ST and `selftrain eval` at random points (halfway through a
file write, through SELFTRAIN_CRASH_AT, or at a random moment), resume each with the same
command, and check the final files equal an uninterrupted run's: the same records (none lost,
none twice) and the same bytes, timings aside. SRIT's SFT and DPO save a checkpoint every
step (``save_every: 1``), so a kill inside them resumes mid-stage.

What counts as a timing: stage seconds and peak memory, a file's modification time in
state.json, a demonstration's time stamp (``at``), evaluation ``seconds`` (results.json and
results.md), report.md's total stage time, and the teacher's accounting of the last attempt
(``demos.run``: the requests that attempt made).

A seeded loop (``SEED``), so a failure reproduces; about 3 minutes on 2 cores. The processes
run on one thread (OMP_NUM_THREADS=1), so every float sum is done in one order: once in some
40 runs on two threads, a resumed DPO-ST warm-up saved weights a last bit apart from the
uninterrupted run's (cause not found: a BLAS may split a sum across threads differently from
run to run). A verified stage answers that by redoing the stages after it; a byte comparison
cannot."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SEED = 15
TIMINGS = {"seconds", "stage_seconds", "peak_rss_mb", "mtime_ns", "at"}
KILLED = -signal.SIGKILL
ONE_THREAD = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _srit(tiny_dir) -> dict:
    return {
        "name": "crash-srit",
        "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 30, "n_validation": 6, "n_test": 6}},
        "teacher": {"n_questions": 8},
        "sft": {"max_epochs": 1, "eval_every": 1, "patience": 1, "val_questions": 3,
                "max_new_tokens": 8, "batch_size": 4, "save_every": 1},
        "sampling": {"n_questions": 6, "offset": 0, "k": 2, "max_new_tokens": 8,
                     "batch_size": 4},
        "rft": {"with_demos": True},
        "dpo": {"enabled": True, "batch_size": 2, "save_every": 1, "keep_last": 1},
        "eval": {"n": 4, "max_new_tokens": 8, "batch_size": 2,
                 "splits": ["in_domain", "out_of_domain"]},
    }  # fmt: skip


def _dpo_st(tiny_dir) -> dict:
    return {
        "name": "crash-dpo-st",
        "method": "dpo_st",
        "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 8, "n_validation": 2, "n_test": 4}},
        "eval": {"splits": ["in_domain"], "n": 3, "max_new_tokens": 8, "batch_size": 2},
        "sampling": {"k": 2, "max_new_tokens": 8, "batch_size": 4},
        "dpo_st": {"rounds": 2, "baselines": [], "n_questions": 6, "sft_k": 2,
                   "sft": {"batch_size": 4, "epochs": 1},
                   "dpo": {"batch_size": 4, "max_steps": 2, "lr": 1e-4},
                   "calculator_ablation": False},
    }  # fmt: skip


def _command(kind: str, tmp_path: Path, tiny_dir: Path, out: Path) -> list[str]:
    if kind == "eval":
        return [
            "eval", "--model", str(tiny_dir), "--tasks", "arithmetic",
            "--limit", "12", "--batch-size", "1", "--max-new-tokens", "8", "--out", str(out),
            "--device", "cpu",
        ]  # fmt: skip
    recipe = tmp_path / f"{kind}.yaml"
    if not recipe.exists():
        body = _srit(tiny_dir) if kind == "srit" else _dpo_st(tiny_dir)
        recipe.write_text(yaml.safe_dump(body))
    return ["run", str(recipe), "--run-dir", str(out)]


def _launch(args: list[str], crash_at: str | None = None, kill_after: float | None = None):
    """Run ``selftrain ARGS`` in a new process; returns (exit status, seconds, stderr)."""
    env = {**os.environ, **ONE_THREAD}
    env.pop("SELFTRAIN_CRASH_AT", None)
    if crash_at is not None:
        env["SELFTRAIN_CRASH_AT"] = crash_at
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "selftrain", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    return proc.returncode, time.monotonic() - start, err


def _strip(obj):
    if isinstance(obj, dict):
        attempt = {"run"} if "teacher" in obj else set()  # a teacher's: the last attempt's
        return {k: _strip(v) for k, v in obj.items() if k not in TIMINGS | attempt}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _files(root: Path, eval_folder: bool = False) -> dict[str, object]:
    """Every file of a run or eval folder: JSON and JSONL parsed with timings left out, any
    other file's bytes. The log and the lock are left out, and so are the temporary files of
    atomic writes a killed `eval` left (a run directory removes its own)."""
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if not path.is_file() or path.name in ("log.txt", ".lock"):
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp") and eval_folder:
            continue
        data = path.read_bytes()
        if path.suffix == ".json":
            out[rel] = _strip(json.loads(data))
        elif path.suffix == ".md":  # results.md's last column, report.md's total are timings
            lines = data.decode().splitlines()
            out[rel] = [
                re.sub(r"\| [\d.]+ \|$", "|", line)
                for line in lines
                if not line.startswith("Total stage time")
            ]
        elif path.suffix == ".jsonl":
            out[rel] = [_strip(json.loads(line)) for line in data.decode().splitlines()]
        else:
            out[rel] = data
    return out


def _crash_and_resume(kind: str, tmp_path: Path, tiny_dir: Path, kills: int) -> int:
    """Kill a ``kind`` run ``kills`` times (over as many fresh folders as that takes), resume
    each to the end, and compare every folder with the uninterrupted run's. Returns the kills."""
    ref = tmp_path / kind / "ref"
    counter = tmp_path / kind / "writes"
    counter.parent.mkdir(parents=True)
    code, seconds, err = _launch(_command(kind, tmp_path, tiny_dir, ref), f"count:{counter}")
    assert code == 0, err
    writes, want = int(counter.read_text()), _files(ref, kind == "eval")
    assert not [rel for rel in want if "checkpoints/" in rel]  # deleted when their stage ended
    assert writes > 10, writes
    rng = random.Random(f"{SEED}-{kind}")
    done, trial = 0, 0
    while done < kills:
        trial += 1
        out = tmp_path / kind / f"trial{trial}"
        args = _command(kind, tmp_path, tiny_dir, out)
        for attempt in range(40):
            if done < kills and rng.random() < 0.75:  # halfway through a file write
                code, _, err = _launch(args, crash_at=str(rng.randint(1, writes)))
            elif done < kills:  # at a random moment (a checkpoint's save, a forward pass)
                code, _, err = _launch(args, kill_after=rng.uniform(2.0, seconds))
            else:
                code, _, err = _launch(args)
            if code == 0:
                break
            assert code == KILLED, f"attempt {attempt} exited {code}:\n{err[-3000:]}"
            done += 1
        else:
            pytest.fail(f"{kind} trial {trial} did not finish in 40 attempts")
        got = _files(out, kind == "eval")
        assert sorted(got) == sorted(want), f"{kind} trial {trial}: other files"
        for rel in want:
            assert got[rel] == want[rel], f"{kind} trial {trial}: {rel} differs"
    return done


def _concurrent(tmp_path: Path, tiny_dir: Path) -> None:
    """A second run on a directory a run is using is refused, naming it, and the first run
    ends with the files of an uninterrupted run."""
    out = tmp_path / "srit" / "concurrent"
    args = [sys.executable, "-m", "selftrain", *_command("srit", tmp_path, tiny_dir, out)]
    env = {**os.environ, **ONE_THREAD}
    first = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(600):  # the lock is taken once the student has loaded
        if (out / "state.json").exists() or first.poll() is not None:
            break
        time.sleep(0.05)
    second = subprocess.run(args, env=env, capture_output=True, text=True)
    assert first.wait() == 0, first.stderr.read().decode()[-3000:]
    assert second.returncode == 2, second.stderr
    assert f"is in use by process {first.pid} on " in second.stderr
    assert _files(out) == _files(tmp_path / "srit" / "ref")


def test_random_kills_leave_the_files_of_an_uninterrupted_run(tiny_dir, tmp_path):
    kills = {
        "srit": _crash_and_resume("srit", tmp_path, tiny_dir, 9),
        "concurrent": _concurrent(tmp_path, tiny_dir) or 0,
        "dpo_st": _crash_and_resume("dpo_st", tmp_path, tiny_dir, 7),
        "eval": _crash_and_resume("eval", tmp_path, tiny_dir, 5),
    }
    assert sum(kills.values()) >= 20
