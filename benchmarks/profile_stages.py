"""Where each stage's time goes: torch.profiler over a small slice of every stage the default
recipe runs, on the default student, with its self time grouped into what is the model's
matmuls and what is not (attention, elementwise ops, copies, the rest).

    python benchmarks/profile_stages.py                          # the untrained student
    python benchmarks/profile_stages.py --adapter runs/demo/sft  # decoding a trained one
    python benchmarks/profile_stages.py --stages sft,eval --top 15

Stages: ``sft`` (train_sft on demonstrations, the frozen-layer cache and fused LoRA as a run
has them), ``eval`` (greedy decoding with the calculator, as the evaluations), ``sample`` (k
paths at T=1, as stage 2), ``dpo`` (the reference pass and DPO steps). Prints one table per
stage (category, seconds, share) and its top operators; ``--json`` keeps the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import torch

CATEGORIES = {
    "matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"),
    "attention": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::_efficient"),
    "copies": (
        "aten::copy_", "aten::cat", "aten::index", "aten::clone", "aten::contiguous",
        "aten::_to_copy", "aten::index_put_", "aten::gather", "aten::fill_", "aten::zero_",
        "aten::empty", "aten::stack", "aten::index_add",
    ),
    "elementwise": (
        "aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::pow",
        "aten::rsqrt", "aten::mean", "aten::neg", "aten::exp", "aten::sum", "aten::_softmax",
        "aten::_log_softmax", "aten::sqrt", "aten::where", "aten::cumsum", "aten::argmax",
        "aten::lerp", "aten::addcmul", "aten::addcdiv", "aten::maximum", "aten::sigmoid",
    ),
}  # fmt: skip


def category(name: str) -> str:
    for cat, prefixes in CATEGORIES.items():
        if any(name.startswith(p) for p in prefixes):
            return cat
    return "other"


def profile(fn) -> tuple[float, dict[str, float], list[tuple[str, float, int]]]:
    """Wall seconds of ``fn()`` under the profiler, self CPU seconds per category, and the
    operators by self time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        fn()
        wall = time.perf_counter() - start
    by_cat: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        if not e.key.startswith("aten::"):
            continue
        seconds = e.self_cpu_time_total / 1e6
        by_cat[category(e.key)] = by_cat.get(category(e.key), 0.0) + seconds
        ops.append((e.key, seconds, e.count))
    ops.sort(key=lambda o: -o[1])
    return wall, by_cat, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--adapter", default=None, help="a run's LoRA checkpoint for decoding")
    parser.add_argument("--stages", default="sft,eval,sample,dpo")
    parser.add_argument("--top", type=int, default=8, help="operators listed per stage")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "float32"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    C.setup_threads(args.threads)
    dtype = C.resolve_dtype(args)
    print(f"machine: {C.machine()}; precision: {dtype} (--dtype auto: the probe's choice)")
    from selftrain.config import DPOConfig, LoraConfig, OptimizerConfig, StudentConfig
    from selftrain.models import Student
    from selftrain.sampling import SamplingParams, generate
    from selftrain.training.dpo import train_dpo
    from selftrain.training.sft import train_sft

    def student(lora: bool) -> Student:
        torch.manual_seed(0)
        lc = LoraConfig(enabled=lora, r=16, alpha=32, top_layers=15)
        cfg = StudentConfig(model=args.model, device=args.device, lora=lc,
                            autocast_bf16=dtype == "bf16")  # fmt: skip
        s = Student.load(cfg)
        if args.adapter and not lora:
            s.apply_checkpoint(args.adapter)
        return s

    quick = args.quick
    task, examples = C.questions(16 if quick else 32)
    _, asked = C.questions(8 if quick else 32, offset=288)
    results = {}
    for stage in args.stages.split(","):
        if stage == "sft":
            s = student(lora=True)
            data = [(s.prompt_ids(task.prompt(e)), s.completion_ids(e.rationale)) for e in examples]
            opt = OptimizerConfig(lr=5e-4, batch_size=8)

            def fn(s=s, data=data, opt=opt):
                train_sft(s, data, opt, epochs=2, seed=0)

        elif stage in ("eval", "sample"):
            s = student(lora=False)
            items = [(e.id, s.prompt_ids(task.prompt(e))) for e in asked]
            greedy = stage == "eval"
            params = SamplingParams(
                k=1 if greedy else 2, greedy=greedy, max_new_tokens=96,
                batch_size=128, calculator=True,
            )  # fmt: skip

            def fn(s=s, items=items, params=params):
                for _ in generate(s, items, params):
                    pass

        elif stage == "dpo":
            import dpo as D

            s = student(lora=True)
            pairs = D.make_pairs(s, 16 if quick else 32)
            cfg = DPOConfig(lr=5e-5, batch_size=8, nll_weight=1.0)

            def fn(s=s, pairs=pairs, cfg=cfg):
                train_dpo(s, pairs, cfg, seed=0)

        else:
            raise SystemExit(f"unknown stage {stage} (sft, eval, sample, dpo)")
        wall, by_cat, ops = profile(fn)
        total = sum(by_cat.values())
        rows = [[c, by_cat.get(c, 0.0), f"{100 * by_cat.get(c, 0.0) / total:.1f}%"]
                for c in (*CATEGORIES, "other")]  # fmt: skip
        print(f"\n{stage}: {wall:.1f} s wall under the profiler")
        print(C.table(rows, ["category", "self seconds", "share"]))
        top = [[name, sec, f"{100 * sec / total:.1f}%", n] for name, sec, n in ops[: args.top]]
        print(C.table(top, ["operator", "self seconds", "share", "calls"]))
        results[stage] = {"wall_s": wall, "categories": by_cat, "top": ops[: args.top]}
    C.write_json(args.json, {"machine": C.machine(), "dtype": dtype, "results": results})


if __name__ == "__main__":
    main()
