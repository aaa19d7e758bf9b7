"""Experiment trackers: a recipe's ``report_to`` (transformers' names: tensorboard, wandb,
trackio; ``all``: those installed; ``none`` or ``[]``: nothing) gets the run's scalars.

The run directory opens the trackers (:func:`start`, rank 0 only; the other ranks log
nothing) and tells the stage in progress; the stages and training loops
call :func:`log`, whose tags are prefixed by that stage (``sft/loss``, ``dpo/margin``) and
whose steps are counted per stage (a stage's optimizer steps). A backend's package is imported
only when the recipe names it, and its files go under ``<run_dir>/tracking/`` (which holds
no stage output: records.py leaves it out).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

BACKENDS = ("tensorboard", "wandb", "trackio")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
_INSTALL = {
    "tensorboard": "pip install 'selftrain[tensorboard]'",
    "wandb": "pip install wandb",
    "trackio": "pip install trackio",
}


class TrackerError(ValueError):
    """A tracker the recipe names whose package is not installed (a fixable setting)."""


class Tracker(Protocol):
    """One backend: scalars by tag at a step, then close."""

    def log(self, scalars: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class TensorBoardTracker:
    """Event files under ``log_dir`` (torch's SummaryWriter), flushed at every close."""

    def __init__(self, log_dir: Path, run_name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir / "tensorboard"), flush_secs=30)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run named after the run directory (its files under ``log_dir``;
    project: $WANDB_PROJECT or ``selftrain``). Each stage's tags get their own step axis."""

    def __init__(self, log_dir: Path, run_name: str):
        import os

        import wandb

        self.wandb = wandb
        log_dir.mkdir(parents=True, exist_ok=True)
        project = os.environ.get("WANDB_PROJECT", "selftrain")
        self.run = wandb.init(project=project, name=run_name, dir=str(log_dir))
        self.axes: set[str] = set()

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        data: dict[str, float] = {}
        for tag, value in scalars.items():
            axis = f"{tag.split('/', 1)[0]}/step"
            if axis not in self.axes:  # wandb's steps only rise: one step metric per stage
                self.run.define_metric(axis)
                self.run.define_metric(f"{tag.split('/', 1)[0]}/*", step_metric=axis)
                self.axes.add(axis)
            data[tag] = value
            data[axis] = step
        self.run.log(data)

    def close(self) -> None:
        self.run.finish()


class TrackioTracker:
    """A trackio run (its local dashboard: ``trackio show``) named after the run directory;
    project: $TRACKIO_PROJECT or ``selftrain``."""

    def __init__(self, log_dir: Path, run_name: str):
        import os

        import trackio

        self.trackio = trackio
        project = os.environ.get("TRACKIO_PROJECT", "selftrain")
        self.run = trackio.init(project=project, name=run_name)

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()


_CLASSES: dict[str, Any] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "trackio": TrackioTracker,
}


def backends(report_to: list[str]) -> list[str]:
    """The backends a recipe's ``report_to`` names (``all``: every one whose package is
    installed), checked to be importable: else a TrackerError naming the package to install."""
    if "all" in report_to:
        return [b for b in BACKENDS if importlib.util.find_spec(_PACKAGES[b]) is not None]
    names = list(dict.fromkeys(report_to))
    for name in names:
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise TrackerError(
                f"report_to: {name} needs the package '{_PACKAGES[name]}', which is not "
                f"installed: {_INSTALL[name]} (or drop {name} from the recipe's report_to)"
            )
    return names


class Tracking:
    """The run's trackers (opened here, so that a tracker that cannot start, such as wandb
    without a login, stops the run before its first stage), the stage in progress and the last
    step each stage logged."""

    def __init__(
        self, names: list[str], run_dir: Path, stage: Callable[[], str | None] = lambda: None
    ):
        self.run_dir, self.stage = run_dir, stage
        log_dir, name = run_dir / "tracking", run_dir.resolve().name
        self.trackers: list[Tracker] = [_CLASSES[n](log_dir, name) for n in names]
        self.steps: dict[str, int] = {}

    def log(self, scalars: Mapping[str, float], step: int | None, prefix: str | None) -> None:
        if not self.trackers:
            return
        prefix = self.stage() if prefix is None else prefix
        key = prefix or ""
        step = self.steps.get(key, 0) if step is None else step
        self.steps[key] = step
        tagged = {f"{prefix}/{k}" if prefix else k: float(v) for k, v in scalars.items()}
        for tracker in self.trackers:
            tracker.log(tagged, step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []


_active: Tracking | None = None


def start(
    report_to: list[str],
    run_dir: Path,
    enabled: bool = True,
    stage: Callable[[], str | None] = lambda: None,
) -> Tracking:
    """The trackers of a run in ``run_dir`` (none when not ``enabled``: ranks but 0, which
    check the packages all the same, so that every rank stops alike), made the ones
    :func:`log` writes to; files go to ``run_dir/tracking``, the run named after it.
    ``stage()`` names the stage in progress, the prefix of the tags logged meanwhile."""
    global _active
    names = backends(report_to)  # on every rank, so that every rank stops alike
    _active = Tracking(names if enabled else [], run_dir, stage)
    return _active


def stop(run_dir: Path) -> None:
    """Close the trackers of the run in ``run_dir`` (flushing them), if they are the ones
    :func:`log` writes to; it then writes nowhere."""
    global _active
    if _active is not None and _active.run_dir == run_dir:
        _active.close()
        _active = None


def log(
    scalars: Mapping[str, float], step: int | None = None, *, prefix: str | None = None
) -> None:
    """Log ``scalars`` to the run's trackers (nothing when it has none): each tag is
    ``<prefix>/<name>``, ``prefix`` defaulting to the stage in progress (``""``: no prefix);
    ``step`` None: the last step logged under that prefix (0 at first)."""
    if _active is not None:
        _active.log(scalars, step, prefix)


def interval(summary: Mapping[str, Any]) -> dict[str, float]:
    """An evaluation's accuracy, its 95% interval and n, as scalars."""
    lo, hi = summary["ci95"]
    return {"accuracy": summary["accuracy"], "ci95_low": lo, "ci95_high": hi, "n": summary["n"]}
