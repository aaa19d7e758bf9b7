"""Optimizer steps on an effective batch, in one process or many: the piece SFT and DPO share.

A recipe's ``batch_size`` is the effective batch: the examples behind one optimizer step, over
all processes. Each process takes every ``world``-th example of it and runs them in
micro-batches of ``micro_batch_size``, accumulating gradients. Every micro-batch's summed loss
is scaled by ``world / norm`` (``norm``: the effective batch's token or pair count), and DDP
and FSDP average gradients over processes, so the gradient is the large batch's whatever the
split (tests/e2e/test_distributed.py holds it to 1e-5 against one process).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from selftrain.config import OptimizerConfig
from selftrain.models import Student
from selftrain.training.loop import TokenScorer, scorer_of

# loss_of(module, item indexes) -> (summed loss of the items, summed statistics to report)
LossFn = Callable[[nn.Module, list[int]], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Trainer:
    """The student's trainable weights, an AdamW optimizer with linear warm-up then cosine
    decay over ``total`` steps (``cfg``: lr, weight decay, warm-up, clipping, micro-batch),
    and the module the loss goes through: a :class:`TokenScorer` of the student's model,
    wrapped by accelerate (DDP, or FSDP2 over a copy whose modules are its own and whose
    tensors are the student's until sharding re-points them) when several processes train."""

    def __init__(self, student: Student, cfg: OptimizerConfig, total: int):
        self.student, self.runtime = student, student.runtime
        self.grad_clip, self.micro = cfg.grad_clip, cfg.micro_batch_size
        module: nn.Module = scorer_of(student)
        if self.runtime.fsdp:  # fully_shard changes the modules it is given: give it a copy
            shared = {id(t): t for t in (*student.model.parameters(), *student.model.buffers())}
            module = copy.deepcopy(module, memo=shared)
        params = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.module, prepared = self.runtime.prepare(module, optimizer)
        self.optimizer = getattr(prepared, "optimizer", prepared)  # accelerate's wrapper's own
        self.schedule = warmup_cosine(self.optimizer, total, cfg.warmup_ratio)
        self.params = [p for p in self.module.parameters() if p.requires_grad]
        student.weights_dir = None
        # FSDP2: the student's own full weights wait in CPU memory while the shards train
        self.offloaded = self.runtime.fsdp and self.runtime.device.type != "cpu"
        if self.offloaded:
            student.model.to("cpu")
        self.module.train()

    def step(self, batch: list[int], loss_of: LossFn, norm: float) -> dict[str, float]:
        """One optimizer step on the effective batch ``batch``; returns the sums over all of
        its items (every process's) of ``loss_of``'s statistics, ``grad_norm`` and the step's
        learning rate ``lr``."""
        world = self.runtime.world
        share = self.runtime.shard(batch)
        per_process = math.ceil(len(batch) / world)
        micro = min(self.micro or per_process, per_process)
        n_micro = math.ceil(per_process / micro)
        sums: dict[str, torch.Tensor] = {}
        for m in range(n_micro):
            items, weight = share[m * micro : (m + 1) * micro], 1.0
            if not items:  # every process runs as many passes as the others (collectives)
                items, weight = batch[:1], 0.0
            with self._sync(m == n_micro - 1):
                loss, stats = loss_of(self.module, items)
                (loss * weight * world / norm).backward()
            for k, v in stats.items():
                sums[k] = sums.get(k, 0.0) + v.detach().double() * weight
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.schedule.step()
        self.optimizer.zero_grad(set_to_none=True)
        names = sorted(sums)
        if not names:
            return {"grad_norm": float(_full(grad_norm)), "lr": lr}
        device = self.runtime.device
        totals = torch.stack([torch.as_tensor(sums[k], device=device) for k in names])
        totals = self.runtime.all_reduce_sum(totals.double()).tolist()
        out = dict(zip(names, totals, strict=True))
        out["grad_norm"] = float(_full(grad_norm))
        out["lr"] = lr
        return out

    def _sync(self, last: bool):
        """Gradients are averaged over processes on a batch's last micro-batch only."""
        if last or not self.runtime.distributed:
            return contextlib.nullcontext()
        if self.runtime.fsdp:
            return _no_fsdp_sync(self.module)
        return self.module.no_sync()

    def sync_student(self) -> None:
        """Make the student's weights the trained ones, on the runtime's device (FSDP2 trains
        a sharded copy: every process gathers each trainable tensor in full; DDP trains the
        student itself)."""
        if not self.runtime.fsdp:
            return
        own = dict(self.student.model.named_parameters())
        with torch.no_grad():
            for name, p in _unwrap(self.module).named_parameters():
                if p.requires_grad:
                    own[name.removeprefix("model.")].copy_(_full(p))
        if self.offloaded:
            self.student.model.to(self.runtime.device)
        self.student.weights_dir = None

    @contextlib.contextmanager
    def student_in_sync(self):
        """The student holds the weights trained so far (for a validation), then training
        goes on."""
        self.sync_student()
        try:
            yield
        finally:
            if self.offloaded:
                self.student.model.to("cpu")
            self.module.train()

    def finish(self) -> None:
        """End of the stage: the student holds the trained weights, in eval mode, and the
        wrapper, its gradients and the optimizer state are released."""
        self.sync_student()
        self.module.eval()
        self.student.model.eval()
        self.runtime.release()
        del self.module, self.optimizer, self.schedule, self.params


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total: int, warmup_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of ``total`` steps, then cosine decay to zero."""
    warm = max(1, int(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@contextlib.contextmanager
def _no_fsdp_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def _unwrap(module: nn.Module) -> TokenScorer:
    return getattr(module, "module", module)  # DDP keeps the wrapped module as .module


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor (FSDP2's sharded tensors) gathered in full; any other tensor as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t
