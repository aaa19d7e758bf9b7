"""Where a run executes: its device, and its peers when ``accelerate launch`` started several
processes.

One process (``python -m selftrain run``) needs nothing from accelerate: the student trains on
``student.device`` as a plain module. Under ``accelerate launch --num_processes N`` every
process builds the same :class:`Runtime`; training goes through accelerate's DDP or FSDP2
(:meth:`Runtime.prepare`), sampling and evaluation split the questions (:meth:`shard`) and
hand every record to every process (:meth:`gather_batches`), and only rank 0 writes the run
directory (:meth:`collect`, :meth:`resume`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

if TYPE_CHECKING:
    from selftrain.tasks.base import Example

T = TypeVar("T")

# a rank-0-only stage (an API teacher, say) can keep the other ranks at a barrier for hours
_TIMEOUT_MIN = int(os.environ.get("SELFTRAIN_DIST_TIMEOUT_MIN", "720"))


class RuntimeSetupError(RuntimeError):
    """A device or launch configuration that cannot run; the message says what to change."""


def launched_processes() -> int:
    """How many processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(spec: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """``student.device`` as a torch device: ``auto`` is CUDA when present (a process's own GPU,
    its local rank, under a launcher), else the CPU."""
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if not re.fullmatch(r"cuda(:\d+)?", spec):
        raise RuntimeSetupError(f"student.device '{spec}': use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise RuntimeSetupError(
            f"student.device is '{spec}' but no CUDA device is visible to torch "
            "(torch.cuda.is_available() is False); use auto or cpu"
        )
    if spec == "cuda":
        return torch.device("cuda", local_rank if world > 1 else torch.cuda.current_device())
    index = int(spec.split(":")[1])
    if world > 1:
        raise RuntimeSetupError(
            f"student.device '{spec}' names one GPU, but {world} processes were launched and "
            "each takes its own (its local rank): set student.device to auto or cuda"
        )
    if index >= torch.cuda.device_count():
        raise RuntimeSetupError(
            f"student.device '{spec}': only {torch.cuda.device_count()} CUDA device(s) visible"
        )
    return torch.device("cuda", index)


class Runtime:
    """The device and, with several processes, the accelerate ``Accelerator`` behind them."""

    def __init__(self, device: torch.device, accelerator: Any = None, fsdp: bool = False):
        self.device = device
        self.accelerator = accelerator
        self.fsdp = fsdp  # FSDP2: training shards a copy of the student (training/trainer.py)
        self.rank = accelerator.process_index if accelerator else 0
        self.world = accelerator.num_processes if accelerator else 1
        self.local_rank = accelerator.local_process_index if accelerator else 0

    @classmethod
    def local(cls, device: str | torch.device = "cpu") -> Runtime:
        """A single process on ``device``: what tests, benchmarks and the library default use."""
        return cls(torch.device(device))

    @classmethod
    def start(cls, device: str = "auto") -> Runtime:
        """The runtime of this process: a plain one without a launcher, else accelerate's."""
        world = launched_processes()
        if world == 1:
            resolved = resolve_device(device)
            if resolved.type == "cuda":
                torch.cuda.set_device(resolved)
            return cls(resolved)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = resolve_device(device, local_rank, world)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        return cls(resolved, *_accelerator(resolved))

    # ---- who am I -------------------------------------------------------------------------
    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        if not self.distributed:
            return f"1 process on {self.device}"
        kind = "FSDP2" if self.fsdp else "DDP"
        return f"{self.world} processes ({kind}), rank {self.rank} on {self.device}"

    # ---- collectives (no-ops with one process) ---------------------------------------------
    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def all_gather(self, obj: T) -> list[T]:
        """``obj`` of every rank, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``tensor`` (in place), on every rank."""
        if self.distributed:
            torch.distributed.all_reduce(tensor)
        return tensor

    def shard(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th, starting at its rank."""
        return list(items[self.rank :: self.world])

    def gather_batches(self, batches: Iterable[list[T]]) -> Iterator[list[T]]:
        """Yield, on every rank, the union of each rank's next batch, round after round, until
        every rank's ``batches`` is exhausted. Each rank decodes its own share at its own pace;
        the ranks meet once per batch, so rank 0 can write the records of all of them as they
        come (a killed run loses at most the batches in flight)."""
        if not self.distributed:
            yield from batches
            return
        it = iter(batches)
        while True:
            mine = next(it, None)
            everyone = self.all_gather(mine)
            if all(b is None for b in everyone):
                return
            merged = [x for b in everyone if b for x in b]
            if merged:
                yield merged

    def collect(
        self, batches: Iterable[list[dict]], out: Path | None, label: str, total: int
    ) -> Iterator[list[dict]]:
        """Every rank's record batches, gathered round after round (:meth:`gather_batches`);
        rank 0 appends each to the JSONL file ``out`` as it comes, so a kill loses at most the
        batches in flight, and shows the progress (``total`` records). Yields each batch."""
        from selftrain.io import JsonlWriter
        from selftrain.progress import bar

        main = self.is_main
        with (
            JsonlWriter(out) if out is not None and main else contextlib.nullcontext() as writer,
            bar(label, total, enabled=main) as progress,
        ):
            for records in self.gather_batches(batches):
                if writer is not None:
                    writer.write_many(records)
                progress.advance(len(records))
                yield records

    def resume(
        self,
        examples: Sequence[Example],
        out: Path | None,
        label: str,
        make: Callable[[list[Example]], Iterable[list[dict]]],
    ) -> list[dict]:
        """The record of every example (matched by ``id``), in their order. Records already in
        the JSONL file ``out`` are read back, so a rerun resumes; ``make`` turns this rank's
        share of the rest into batches of records, which are gathered and appended to ``out`` as
        they come (:meth:`collect`)."""
        from selftrain.io import read_jsonl

        done = {r["id"]: r for r in read_jsonl(out)} if out is not None else {}
        todo = [e for e in examples if e.id not in done]
        if todo:
            for records in self.collect(make(self.shard(todo)), out, label, len(todo)):
                done.update((r["id"], r) for r in records)
        return [done[e.id] for e in examples]

    # ---- training --------------------------------------------------------------------------
    def prepare(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer):
        """``(module, optimizer)`` wrapped for this run's processes by accelerate: DDP, or
        FSDP2 (which shards the module in place: pass a copy, see training/trainer.py)."""
        if not self.distributed:
            return module, optimizer
        if self.fsdp:
            _assert_fsdp(self.accelerator)
        return self.accelerator.prepare(module, optimizer)

    def release(self) -> None:
        """Drop accelerate's references to prepared objects (their memory is freed)."""
        if self.accelerator is not None:
            self.accelerator.free_memory()


def _accelerator(device: torch.device) -> tuple[Any, bool]:
    """accelerate's ``Accelerator`` for a launched process, and whether it trains with FSDP2."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    # precision is the recipe's (student.dtype, student.autocast_bf16), not accelerate's
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision="no",
        kwargs_handlers=[InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=_TIMEOUT_MIN))],
    )
    kind = accelerator.distributed_type
    wants_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if kind == DistributedType.DEEPSPEED:
        raise RuntimeSetupError(
            "selftrain trains with DDP or FSDP2 through accelerate; DeepSpeed's engine owns "
            "the optimizer step, which selftrain's loop does itself. For ZeRO-3's sharding use "
            "FSDP2: `accelerate launch --use_fsdp --fsdp_version 2` (README: GPUs and many GPUs)"
        )
    if wants_fsdp and kind == DistributedType.MULTI_CPU:
        # accelerate runs `--use_fsdp` without GPUs as plain multi-CPU DDP; FSDP2 itself runs
        # over gloo, so the processes are made FSDP2 ones (the CPU tests of the FSDP path)
        from accelerate.utils import FullyShardedDataParallelPlugin

        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
        return accelerator, True
    if kind == DistributedType.FSDP:
        if not accelerator.is_fsdp2:
            raise RuntimeSetupError(
                "FSDP version 1 is not supported: set fsdp_version: 2 in the accelerate config "
                "(or pass --fsdp_version 2)"
            )
        return accelerator, True
    return accelerator, False


def _assert_fsdp(accelerator: Any) -> None:
    """Make accelerate take its FSDP2 path in ``prepare`` (on a CPU-only launch its state
    reads as multi-CPU DDP; see :func:`_accelerator`)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if state.distributed_type != DistributedType.FSDP:
        state.distributed_type = DistributedType.FSDP
    # the student is already loaded on every rank; accelerate's meta-device loading would
    # re-point the parameters it shares with the training copy
    state.fsdp_plugin.cpu_ram_efficient_loading = False


def return_freed_memory() -> bool:
    """Have glibc hand every freed allocation of 1 MiB or more back to the system at once.

    Its default threshold grows to the largest block freed so far (up to 32 MiB), so a decode
    step's logits and KV-cache copies come from a heap that holds on to them afterwards. A
    fixed 1 MiB threshold (``mallopt(M_MMAP_THRESHOLD)``) lowered the peak memory of a greedy
    evaluation of the default student from 3634 to 2738 MB at the same speed (112 vs 115 s,
    160 questions, batch 128, this 2-core CPU). Returns whether it applied (glibc only)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 1 << 20))  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl): leave the allocator as it is
        return False
