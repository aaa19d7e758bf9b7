"""The run directory: the resolved recipe, which stages are done and what each produced, stage
timings, metrics.

state.json is the truth. A stage marked done also records its outputs: every file it wrote
(bytes, records for JSONL, sha256), what it returns to later stages, and the metrics it set.
Every start checks those files: a stage whose output is missing, torn or changed is redone
(with a warning), and metrics.json is rebuilt from the records when it is lost.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from selftrain import tracking
from selftrain.config import DPOSTRecipe, Recipe, SRITRecipe, parse_recipe
from selftrain.errors import yaml_problem
from selftrain.io import read_json, write_json_atomic, write_text_atomic
from selftrain.progress import log, setup_logging
from selftrain.records import check, describe, hashes, remove_stale_temporaries, snapshot
from selftrain.runtime import Runtime


class RunDirError(RuntimeError):
    pass


class RunDir:
    """A run directory is the source of truth: a stage marked done is never recomputed.

    With several processes every rank keeps the same state in memory, and only rank 0 writes:
    a stage ends with a barrier, after which the other ranks read back what rank 0 wrote."""

    def __init__(self, path: str | Path, recipe: Recipe, runtime: Runtime | None = None):
        self.path = Path(path)
        self.runtime = runtime or Runtime.local()
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path} is a file, not a run directory")
        self._lock: IO[str] | None = None
        self._current: str | None = None  # the stage in progress
        self._puts: list[list[Any]] = []  # the metrics it has set
        self._redo: dict[str, dict[str, Any]] = {}  # stages found broken: their old record
        if self.runtime.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = _lock(self.path)  # held until close() or the process ends
        try:
            self._open(recipe)
            this = weakref.ref(self)  # the trackers must not keep a dropped RunDir (its lock)
            tracking.start(
                recipe.report_to, self.path, self.runtime.is_main, lambda: this()._current
            )
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the trackers; let another process run in this directory."""
        if self._lock is not None:  # rank 0's, which holds the lock: a refused one has none
            tracking.stop(self.path)
            self._lock.close()  # closing the file releases its lock
            self._lock = None

    def _open(self, recipe: Recipe) -> None:
        main = self.runtime.is_main  # the run's log: rank 0 writes log.txt, the others warn only
        setup_logging(self.path / "log.txt" if main else None, quiet=not main)
        self.runtime.barrier()
        resolved = recipe.model_dump(mode="json")
        saved = self.path / "recipe.yaml"
        if saved.exists():  # every rank checks, so every rank stops on a mismatch
            old = _with_defaults(_read_saved(saved))
            # a key the saved recipe lacks reads as its default (or null): run dirs made before
            # a key or section (dpo_st) was in the schema still resume; report_to and the
            # speed-only keys may differ
            diff = sorted(_diff_keys(old, resolved) - MAY_CHANGE)
            if diff:
                raise RunDirError(
                    f"{self.path} holds a run of a different recipe (keys that differ: "
                    f"{', '.join(diff[:8])}); resume it with the same recipe or use another "
                    "--run-dir"
                )
        elif self.runtime.is_main:
            write_text_atomic(saved, yaml.safe_dump(resolved, sort_keys=False))
        self.runtime.barrier()
        if not saved.exists():
            raise RunDirError(
                f"rank {self.runtime.rank} cannot see {saved}, which rank 0 wrote: with several "
                "machines the run directory must be on a filesystem every machine shares"
            )
        self._state_path = self.path / "state.json"
        self._metrics_path = self.path / "metrics.json"
        if self.runtime.is_main:
            remove_stale_temporaries(self.path)
            self.state = _read_state(self._state_path)
            self._verify()
            self._load_metrics()
        self.runtime.barrier()
        self._read()

    def _read(self) -> None:
        self.state = _read_state(self._state_path)
        self.metrics: dict[str, Any] = (
            read_json(self._metrics_path) if self._metrics_path.exists() else {}
        )

    def _verify(self) -> None:
        """Check every done stage's recorded outputs; a stage whose files are missing, torn or
        changed is marked undone (its remaining outputs removed), so this run redoes it."""
        records = self.state.setdefault("stages", {})
        for name in list(self.state["done"]):
            record = records.get(name)
            if record is None:  # done by a version that kept no record: trusted
                continue
            problem = check(self.path, record["outputs"])
            if problem:
                log.warning("stage %s: %s; the stage is redone", name, problem)
                self._redo[name] = {**record, "later": self._invalidate(name)}
        self._save_state()

    def _invalidate(self, name: str) -> list[str]:
        """Mark ``name`` undone and remove the files it recorded; returns the done stages that
        came after it."""
        done = self.state["done"]
        i = done.index(name)
        later = done[i + 1 :]
        del done[i]
        record = self.state["stages"].pop(name, None) or {"outputs": {}}
        for rel in record["outputs"]:
            (self.path / rel).unlink(missing_ok=True)
        self.state.setdefault("redo_at", {})[name] = i
        return later

    def _load_metrics(self) -> None:
        """metrics.json, rebuilt from the stage records when it is missing or unreadable."""
        try:
            if self._metrics_path.exists():
                read_json(self._metrics_path)
                return
            problem = "missing"
        except (ValueError, UnicodeDecodeError):
            problem = "unreadable"
        puts = [(n, p) for n in self.state["done"] for p in self._record(n).get("metrics", [])]
        if not puts:
            return
        log.warning("metrics.json is %s; rebuilt from state.json's stage records", problem)
        self.metrics = {}
        for _, (key, value) in puts:
            self.put(key, value)
        self._stage_metrics()

    def _record(self, name: str) -> dict[str, Any]:
        return self.state.get("stages", {}).get(name) or {}

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def result(self, stage: str) -> dict[str, Any]:
        """What a done stage returned to later stages (the dict its ``stage`` block filled)."""
        return dict(self._record(stage).get("result", {}))

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage (seconds add up across resumed attempts) and mark it done on success,
        recording the files it wrote, the metrics it set and the dict it yields, which the
        stage fills with what later stages need (:meth:`result`). Work inside that only rank 0
        does (``if rd.runtime.is_main``) is seen by the other ranks once the stage has ended."""
        if self.runtime.is_main:
            log.info("stage %s", name)
            running = self.state.get("running") or {}
            if running.get("stage") != name:  # a resumed attempt keeps the first's snapshot
                self.state["running"] = {"stage": name, "before": snapshot(self.path)}
                self._save_state()
        start = time.monotonic()
        result: dict[str, Any] = {}
        self._current, self._puts = name, []
        try:
            yield result
        finally:
            self._current = None
            secs = self.state["seconds"]
            secs[name] = round(secs.get(name, 0.0) + time.monotonic() - start, 1)
            tracking.log({name: secs[name]}, 0, prefix="stage_seconds")
            peak = _peak_rss_mb()
            if peak is not None:  # the process's peak so far: the stage that raised it shows
                self.state.setdefault("peak_rss_mb", {})[name] = peak
            self._save_state()
        if self.runtime.is_main:
            self._finish(name, result)
        self.runtime.barrier()
        if not self.runtime.is_main:
            self._read()

    def _finish(self, name: str, result: dict[str, Any]) -> None:
        """Record what stage ``name`` produced and mark it done (rank 0)."""
        before = self.state.pop("running", {}).get("before", {})
        outputs = {
            rel: describe(self.path / rel, st)
            for rel, st in snapshot(self.path).items()
            if before.get(rel) != st
        }
        self.state.setdefault("stages", {})[name] = {
            "outputs": outputs,
            "result": result,
            "metrics": self._puts,
        }
        at = self.state.get("redo_at", {}).pop(name, len(self.state["done"]))
        self.state["done"].insert(at, name)
        old = self._redo.pop(name, None)
        if old is not None and hashes(old["outputs"]) != hashes(outputs):
            later = [s for s in old["later"] if self.done(s)]
            if later:
                log.warning(
                    "stage %s: its redone outputs differ from the ones the stages after it used; "
                    "%s are redone too",
                    name,
                    ", ".join(later),
                )
            for s in later:
                self._invalidate(s)
        self._save_state()
        self._stage_metrics()

    def _stage_metrics(self) -> None:
        """Keep metrics.json's timings complete (every stage's so far)."""
        if self.metrics:
            self.set_metric("stage_seconds", dict(self.state["seconds"]))
            if "peak_rss_mb" in self.state:
                self.set_metric("peak_rss_mb", dict(self.state["peak_rss_mb"]))

    def set_metric(self, key: str, value: Any) -> None:
        if self._current is not None:
            self._puts.append([[key], value])
        self.metrics[key] = value
        self.metrics["stage_seconds"] = dict(self.state["seconds"])
        if self.runtime.is_main:
            write_json_atomic(self._metrics_path, self.metrics)

    def put(self, key: str | Sequence[str], value: Any) -> None:
        """Set a (nested) entry of metrics.json: ``key`` a name or a path of names."""
        key = (key,) if isinstance(key, str) else tuple(key)
        if len(key) == 1:
            self.set_metric(key[0], value)
            return
        if self._current is not None:
            self._puts.append([list(key), value])
        top = self.metrics.get(key[0])
        top = top if isinstance(top, dict) else {}
        node = top
        for k in key[1:-1]:
            node = node.setdefault(k, {})
        node[key[-1]] = value
        self.metrics[key[0]] = top
        self.metrics["stage_seconds"] = dict(self.state["seconds"])
        if self.runtime.is_main:
            write_json_atomic(self._metrics_path, self.metrics)

    def get(self, key: str | Sequence[str]) -> Any:
        """A (nested) entry of metrics.json, ``{}`` where it is absent."""
        node: Any = self.metrics
        for k in (key,) if isinstance(key, str) else key:
            node = node.get(k, {}) if isinstance(node, dict) else {}
        return node

    def write_json(self, relative: str | Path, obj: Any) -> None:
        """Write a JSON file of the run (rank 0 only)."""
        if self.runtime.is_main:
            write_json_atomic(self.path / relative, obj)

    def _save_state(self) -> None:
        if self.runtime.is_main:
            write_json_atomic(self._state_path, self.state)


def _read_saved(path: Path) -> Any:
    """The recipe a run directory was started with."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = yaml_problem(e) if isinstance(e, yaml.YAMLError) else str(e)
        raise RunDirError(
            f"{path}: not a readable recipe ({problem}); it holds the settings this run was "
            "started with: restore it, or use another --run-dir"
        ) from None


def _read_state(path: Path) -> dict[str, Any]:
    """state.json: the stages done, in order, and their seconds (nothing done when absent)."""
    if not path.exists():
        return {"done": [], "seconds": {}}
    try:
        state = read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise RunDirError(f"{e}; delete {path} to redo every stage of the run") from None
    if not (
        isinstance(state, dict)
        and isinstance(state.get("done"), list)
        and isinstance(state.get("seconds", {}), dict)
    ):
        raise RunDirError(
            f"{path}: not a run state (a list 'done' of stages and a map 'seconds'); delete it "
            "to redo every stage of the run"
        )
    state.setdefault("seconds", {})
    return state


def _lock(path: Path) -> IO[str]:
    """An exclusive lock on ``path/.lock`` (which names its holder), or a RunDirError naming
    the process that holds it."""
    import fcntl
    import os
    import socket

    f = open(path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise RunDirError(
            f"{path} is in use by {holder}: one run at a time per run directory; wait for it "
            "to end, or use another --run-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"process {os.getpid()} on {socket.gethostname()}")
    f.flush()
    return f


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where getrusage cannot say)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


# recipe keys a resumed run may change: they change how fast it runs or where it reports,
# not what it computes
MAY_CHANGE = {
    "report_to",
    "student.frozen_cache",
    "student.frozen_cache_mb",
    "student.shared_prefix",
    "student.fused_lora",
}


def _with_defaults(saved: Any) -> Any:
    """A saved recipe with the keys it lacks at today's defaults (as saved if it no longer
    validates: the comparison then names what differs)."""
    try:
        return parse_recipe(_upgraded(saved)).model_dump(mode="json")
    except ValidationError:
        return saved


# DPO-ST's sampler keys, under dpo_st until 2026-12-04, now in the shared sampling section
_MOVED_TO_SAMPLING = {
    "k": "k",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_new_tokens": "max_new_tokens",
    "sampling_batch_size": "batch_size",
}


def _upgraded(saved: Any) -> Any:
    """A recipe saved by an older version in today's layout: until 2026-12-04 every recipe
    held every method's sections (SRIT's at their defaults in a DPO-ST recipe, ``dpo_st:
    null`` in an SRIT one), and DPO-ST's sampler keys sat under ``dpo_st``."""
    if not isinstance(saved, dict):
        return saved
    if saved.get("method", "srit") == "srit":
        return {k: v for k, v in saved.items() if not (k == "dpo_st" and v is None)}
    old = saved.get("dpo_st")
    if not isinstance(old, dict) or not set(_MOVED_TO_SAMPLING) & set(old):
        return saved
    srit_only = set(SRITRecipe.model_fields) - set(DPOSTRecipe.model_fields)
    out = {k: v for k, v in saved.items() if k not in srit_only}
    sampling = {k: v for k, v in (saved.get("sampling") or {}).items() if k in ("engine", "vllm")}
    sampling |= {new: old[k] for k, new in _MOVED_TO_SAMPLING.items() if k in old}
    out["sampling"] = sampling
    out["dpo_st"] = {k: v for k, v in old.items() if k not in _MOVED_TO_SAMPLING}
    return out


def _diff_keys(a: Any, b: Any, prefix: str = "") -> set[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: set[str] = set()
        for k in set(a) | set(b):
            out |= _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return set() if a == b else {prefix.rstrip(".")}
