"""Shared pieces of the benchmark scripts: machine description, model and data loading, the
alternating timer, peak-memory measurement and the result table."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import contextlib

import torch

ROOT = Path(__file__).resolve().parent.parent
TINY = {"tiny", "tiny-llama", "tiny-qwen2"}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: a few minutes on 2 cores"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs of each engine")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")


def add_training_args(parser: argparse.ArgumentParser, lr: float) -> None:
    """The options dpo.py and sft.py share (model, modes, dtype, memory runs, ...)."""
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--modes", default=None, help="default lora,full (quick: lora)")
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "bf16", "float32"],
        help="auto: what the recipe's autocast_bf16: auto picks here (its probe; bf16 on a GPU)",
    )
    parser.add_argument("--trl-checkpointing", action="store_true")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)


def resolve_dtype(args) -> str:
    """``args.dtype`` with ``auto`` replaced by the precision selftrain's probe picks on this
    machine (``student.autocast_bf16: auto``), which every number is then printed beside."""
    if args.dtype == "auto":
        from selftrain.models.loading import resolve_autocast

        args.dtype = "bf16" if resolve_autocast("auto", torch.device(args.device)) else "float32"
    return args.dtype


def setup_threads(threads: int | None) -> int:
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine() -> str:
    """One line: CPU model, cores, torch threads, bf16 support, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = Path("/proc/cpuinfo").read_text()
        bf16 = "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        bf16 = False
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name(0)}"
    versions = [f"torch {torch.__version__}"]
    for name in ("transformers", "peft", "trl", "vllm"):
        with contextlib.suppress(Exception):
            versions.append(f"{name} {__import__(name).__version__}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, "
        f"bf16 {'yes' if bf16 else 'no'}, load average {load:.1f}; " + ", ".join(versions)
    )


def student_config(model: str, *, lora: bool = False, dtype: str = "float32", **kwargs):
    from selftrain.config import LoraConfig, StudentConfig

    if model == "tiny":
        model = "tiny-llama"
    return StudentConfig(model=model, dtype=dtype, lora=LoraConfig(enabled=lora, **kwargs))


def load_student(
    model: str, *, dtype: str = "float32", adapter: str | None = None, device: str = "cpu"
):
    """A LoRA-less student on ``device`` (an adapter from a run is merged into its weights)."""
    from selftrain.models import Student
    from selftrain.runtime import Runtime

    student = Student.load(student_config(model, dtype=dtype), Runtime.local(device))
    if adapter:
        student.apply_checkpoint(adapter)
    return student


def questions(n: int, split: str = "train", offset: int = 0):
    """The generated arithmetic task's questions, as the default recipe samples them."""
    from selftrain.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(
        seed=0, min_steps=2, max_steps=4, max_number=20, ood_max_number=40, max_result=200
    )
    return task, task.load(split, offset + n)[offset:]


def short_name(model: str) -> str:
    return "tiny-llama" if model in TINY else Path(model).name


@dataclass
class Timing:
    """Runs of one engine on one configuration: seconds and work units (tokens) per run."""

    engine: str
    seconds: list[float] = field(default_factory=list)
    units: list[float] = field(default_factory=list)

    def rate(self) -> float:
        """Median rate over the runs (units per second)."""
        return statistics.median(u / s for u, s in zip(self.units, self.seconds, strict=True))


def alternate(
    runs: dict[str, Callable[[], float]],
    repeats: int,
    warmups: dict[str, Callable[[], object]] | None = None,
) -> dict[str, Timing]:
    """Time each callable ``repeats`` times, alternating engines (peer first, in the order
    given), after one untimed warm-up of each (``warmups[name]``, a smaller run, or else the
    run itself). A callable returns its work units (timed whole), or ``(units, seconds)``
    when it times the part that counts itself."""
    names = list(runs)
    for name in names:
        (warmups or runs).get(name, runs[name])()
    out = {name: Timing(name) for name in names}
    for _ in range(repeats):
        for name in names:
            start = time.perf_counter()
            result = runs[name]()
            seconds = time.perf_counter() - start
            units = result
            if isinstance(result, tuple):
                units, seconds = result
            out[name].seconds.append(seconds)
            out[name].units.append(units)
    return out


def table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(c) -> str:
    if isinstance(c, float):
        return f"{c:.2f}" if abs(c) < 1000 else f"{c:.0f}"
    return str(c)


def geomean(xs: Sequence[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


# ---- peak memory ----------------------------------------------------------------------------
def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMemory:
    """Peak resident memory of a block above the memory held when it starts, in MiB.

    CPU: the kernel's high-water mark of this process (VmHWM) is reset to the current RSS at
    the start (``/proc/self/clear_refs``) and read at the end. Without that reset it falls back
    to ``ru_maxrss`` minus the RSS at the start, which is right only while the block is the
    process's highest point; run each configuration in a fresh subprocess
    (:func:`in_subprocess`) so no earlier run's freed-but-kept memory hides its peak.
    GPU: torch's peak allocated memory, reset at the start."""

    def __enter__(self) -> PeakMemory:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.resettable = reset_peak()
            self.base = rss_kib()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2**20
        else:
            self.mib = max(0, peak_kib() - self.base) / 1024


def in_subprocess(script: Path, args: Sequence[str], timeout: float | None = None) -> dict:
    """Run ``script args --child`` in a fresh Python and return the JSON object it prints on
    its last output line."""
    cmd = [sys.executable, str(script), *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path[:1]])}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def child_peak_memory(script: Path, engines, mode: str, args, extra: Sequence[str]) -> dict:
    """Each engine's peak memory in MiB for ``mode``, measured in a fresh ``script --child``
    process (``extra``: the script's own options); empty with ``--no-memory``."""
    if args.no_memory:
        return {}
    memory = {}
    for engine in engines:
        child_args = [
            "--child", f"{engine},{mode}", "--model", args.model,
            "--batch-size", str(args.batch_size), "--dtype", args.dtype,
            "--device", args.device, *extra,
        ]  # fmt: skip
        if args.trl_checkpointing:
            child_args.append("--trl-checkpointing")
        if args.threads:
            child_args += ["--threads", str(args.threads)]
        memory[engine] = in_subprocess(script, child_args)["peak_mib"]
    return memory


def compare_to_trl(mode: str, timings: dict, memory: dict) -> dict:
    """Print ``mode``'s speedup (selftrain over trl) and peak memories; return its record."""
    ratio = timings["selftrain"].rate() / timings["trl"].rate()
    mem_note = ""
    if memory:
        mem_note = f", peak memory {memory['selftrain']:.0f} vs {memory['trl']:.0f} MiB"
    print(f"{mode}: speedup {ratio:.2f}{mem_note}", flush=True)
    return {
        "mode": mode,
        "speedup": ratio,
        **{f"{e}_tok_s": t.rate() for e, t in timings.items()},
        **{f"{e}_peak_mib": m for e, m in memory.items()},
    }


def finish(args, results: list[dict], speedups: Sequence[float]) -> None:
    """Write ``--json`` (machine, options, results) and print the last line,
    ``speedup X.XX`` (the geometric mean of ``speedups``)."""
    payload = {"machine": machine(), "args": {**vars(args), "json": None}, "results": results}
    write_json(args.json, payload)
    print(f"speedup {geomean(speedups):.2f}")


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2) + "\n")


# ---- FLOPs and MFU ------------------------------------------------------------------------------
def matmul_rate(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 1.0) -> float:
    """This machine's measured matmul rate in FLOP/s: the best of repeated ``n x n`` products
    (``2 n^3`` FLOPs each), timed for about ``seconds``."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best, start = 0.0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t))
    return best


@dataclass
class FlopModel:
    """Matmul FLOPs of a causal decoder, counted from its weights.

    forward, per sequence of L tokens with C labelled ones:
        2 * P_layers * L              (every linear map in the decoder blocks)
      + 4 * A * n_layers * L(L+1)/2   (QK^T and attention x V over the causal prefix,
                                       A = heads x head_dim)
      + 2 * P_head * C                (the output layer, applied only where a label is)
    backward: full fine-tuning 2x the forward (gradients of activations and of weights); LoRA
    on the top ``trained_layers`` of n_layers: 1x the forward of those layers and of the output
    layer (activation gradients only; the adapters' own FLOPs, under 2% at r=16, are left out),
    nothing below the lowest adapted layer. Embedding look-ups, norms and activations are
    not counted."""

    p_layers: int
    p_head: int
    attn_width: int
    n_layers: int

    @classmethod
    def of(cls, model) -> FlopModel:
        from torch import nn

        decoder = model.get_decoder()
        layers = decoder.layers
        p_layers = sum(
            m.weight.numel()
            for layer in layers
            for m in layer.modules()
            if isinstance(m, nn.Linear) and "lora" not in type(m).__name__.lower()
        )
        config = model.config
        head_dim = (
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        return cls(
            p_layers=p_layers,
            p_head=model.get_output_embeddings().weight.numel(),
            attn_width=config.num_attention_heads * head_dim,
            n_layers=len(layers),
        )

    def forward(self, length: int, labelled: int, layers_frac: float = 1.0) -> float:
        body = (
            2 * self.p_layers * length
            + 4 * self.attn_width * self.n_layers * length * (length + 1) / 2
        )
        return layers_frac * body + 2 * self.p_head * labelled

    def train_step(self, length: int, labelled: int, trained_layers: int | None) -> float:
        """Forward + backward FLOPs of one sequence; ``trained_layers`` None = full fine-tuning."""
        fwd = self.forward(length, labelled)
        if trained_layers is None:
            return 3 * fwd
        return fwd + self.forward(length, labelled, trained_layers / self.n_layers)
