"""Checkpoints inside a training stage, so a killed SFT or DPO resumes mid-stage.

Every ``save_every`` optimizer steps (the optimizer section's ``save_every``; None or 0: never)
a stage's training writes ``<stage>/checkpoints/step-NNNNNN/``: the trainable weights as the
stage saves its model (a PEFT adapter folder with LoRA, ``model/``), and ``state.pt``: the
optimizer's and the LR schedule's states, the training loop's own (step, position in the data,
logged history, SFT's best validation score and weights) and the fingerprint of what is being
trained, with ``rng-R.pt`` (the torch, CUDA, numpy and Python random states of rank R) and
``manifest.json`` (every file's size) last. It is written as ``.step-NNNNNN.tmp`` and renamed,
so a folder named ``step-*`` is complete; the last ``keep_last`` are kept.

When training starts, the newest intact checkpoint whose fingerprint matches (the same data,
seed, steps, optimizer settings and start weights) is loaded and training goes on from it; a
torn or mismatched one is skipped with a warning. The data's order is a function of the seed,
so the position in it is the step: the plan is replayed up to it (:func:`resume_plan`). The
stage deletes the folder once its model is saved, so no checkpoint is a stage output
(records.py). Several processes: rank 0 writes (each rank its own RNG file), every rank loads;
the optimizer's state goes through ``torch.distributed.checkpoint``'s full state dicts, keyed by
parameter names, so FSDP2's shards are gathered to rank 0 and split again on load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch

from selftrain.config import OptimizerConfig
from selftrain.io import read_json, write_json_atomic
from selftrain.models import Student

log = logging.getLogger(__name__)

VERSION = 1
PREFIX = "step-"


class StepCheckpoints:
    """The checkpoints of one training run in ``folder`` (None: no checkpoints)."""

    def __init__(
        self, folder: Path | None, cfg: OptimizerConfig, student: Student, fingerprint: str
    ):
        self.student, self.runtime = student, student.runtime
        self.every = (cfg.save_every or 0) if folder is not None else 0
        self.keep = cfg.keep_last
        self.folder = Path(folder) if folder is not None else Path()
        self.fingerprint = fingerprint
        self.state: dict[str, Any] | None = None  # the loaded checkpoint's state.pt
        self.skipped: list[Path] = []  # torn or another training's: removed at the first save

    def load_weights(self) -> int:
        """Load the newest intact checkpoint's weights into the student (before the trainer is
        built from them); returns its step, 0 when there is none."""
        if not self.every:
            return 0
        for path in reversed(self.saved()):
            state = self._intact(path)
            if state is None:
                self.skipped.append(path)
                continue
            self.student.load_weights(path / "model")
            self.state, self.path = state, path
            log.info("resuming from %s (step %d)", path, state["step"])
            return state["step"]
        return 0

    def resume(self, trainer) -> dict[str, Any]:
        """Restore the optimizer, the LR schedule and the random states of the checkpoint
        :meth:`load_weights` loaded; returns its training-loop state ({} when none)."""
        if self.state is None:
            return {}
        from torch.distributed.checkpoint.state_dict import (  # 4 s to import: only here
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            trainer.module,
            trainer.optimizer,
            optim_state_dict=self.state["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        trainer.schedule.load_state_dict(self.state["scheduler"])
        rng = self.path / f"rng-{self.runtime.rank}.pt"
        set_rng_state(torch.load(rng if rng.is_file() else self.path / "rng-0.pt"))
        return self.state["loop"]

    def after_step(
        self, trainer, step: int, total: int, loop: Callable[[], dict[str, Any]]
    ) -> None:
        """Save a checkpoint when ``step`` is due (not the last of ``total``: the stage saves
        its model then); ``loop`` gives the training loop's state."""
        if not self.every or step % self.every or step >= total:
            return
        from torch.distributed.checkpoint.state_dict import (  # 4 s to import: only here
            StateDictOptions,
            get_optimizer_state_dict,
        )

        main = self.runtime.is_main
        name = f"{PREFIX}{step:06d}"
        tmp, final = self.folder / f".{name}.tmp", self.folder / name
        if main:
            for path in [tmp, *self.skipped]:
                shutil.rmtree(path, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.skipped = []
        self.runtime.barrier()
        torch.save(rng_state(), tmp / f"rng-{self.runtime.rank}.pt")
        with trainer.student_in_sync():
            self.student.save(tmp / "model")  # rank 0 writes, every rank waits
        self.student.weights_dir = None  # the weights trained go on changing
        # in full, keyed by parameter names (FSDP2: gathered from the shards to rank 0)
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optimizer = get_optimizer_state_dict(trainer.module, trainer.optimizer, options=full)
        if main:
            state = {
                "version": VERSION,
                "fingerprint": self.fingerprint,
                "step": step,
                "optimizer": optimizer,
                "scheduler": trainer.schedule.state_dict(),
                "loop": loop(),
            }
            torch.save(state, tmp / "state.pt")
            files = {p.relative_to(tmp).as_posix(): p.stat().st_size for p in _files(tmp)}
            write_json_atomic(tmp / "manifest.json", {"step": step, "files": files})
            shutil.rmtree(final, ignore_errors=True)  # a torn one of an earlier attempt
            tmp.rename(final)
            for old in self.saved()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        self.runtime.barrier()

    def saved(self) -> list[Path]:
        """The checkpoint folders, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.glob(f"{PREFIX}*") if p.is_dir())

    def _intact(self, path: Path) -> dict[str, Any] | None:
        """``path``'s state when its files are whole and it belongs to this training; else
        None, with a warning."""
        try:
            manifest = read_json(path / "manifest.json")
            for rel, size in manifest["files"].items():
                if (path / rel).stat().st_size != size:
                    raise ValueError(f"{rel} has {(path / rel).stat().st_size} bytes, not {size}")
            state = torch.load(path / "state.pt", map_location="cpu")
        except (OSError, ValueError, KeyError, RuntimeError, EOFError, UnpicklingError) as e:
            log.warning("checkpoint %s is torn or unreadable (%s); skipped", path, e)
            return None
        if state.get("version") != VERSION or state.get("fingerprint") != self.fingerprint:
            log.warning(
                "checkpoint %s is of another training (other data, seed, settings or start "
                "weights); skipped",
                path,
            )
            return None
        return state


def remove_checkpoints(student: Student, folder: Path) -> None:
    """Delete a stage's checkpoints once its model is saved (rank 0)."""
    if student.runtime.is_main:
        shutil.rmtree(folder, ignore_errors=True)


def resume_plan(plan: Iterator[list[int]], step: int) -> Iterator[list[int]]:
    """The batches after the first ``step`` of a seeded plan (the position in the data)."""
    return islice(plan, step, None)


def fingerprint(student: Student, *parts: Any) -> str:
    """A digest of ``parts`` (JSON-able: data, settings) and of the student's trainable
    weights as they are now (a strided sample of every tensor's bytes: cheap for a 7B)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True, default=_jsonable).encode())
    for name, p in student.model.named_parameters():
        if p.requires_grad:
            flat = p.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
            h.update(name.encode() + str(tuple(p.shape)).encode() + sample.numpy().tobytes())
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    """The torch (CPU, CUDA), numpy and Python random states, as tensors and plain values
    (``torch.load``'s safe mode reads them back)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _files(root: Path) -> Iterable[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return hashlib.sha256(obj.detach().float().cpu().numpy().tobytes()).hexdigest()
    raise TypeError(f"cannot fingerprint {type(obj).__name__}")
