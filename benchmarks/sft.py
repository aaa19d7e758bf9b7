"""SFT: selftrain's ``train_sft`` vs TRL's ``SFTTrainer`` (PyPI), tokens/s, peak memory, MFU.

The engines train the same model weights on the same demonstrations (the generated task's
gold rationales as token ids: prompt, completion + EOS; loss on the completion only), with the
same LoRA adapters as the default recipe (r 16 on the top 15 layers) or full fine-tuning, the
same batch size, learning rate and number of epochs (the default recipe's SFT runs up to 6
over its 288 demonstrations: the work its frozen-layer cache saves grows with the epochs),
and the same precision (``--dtype auto``: the one selftrain's probe picks on this machine).
TRL gets a pre-tokenized dataset (``input_ids`` and ``labels``), gradient checkpointing off
(``--trl-checkpointing`` turns its default back on), no packing.

Engines: ``trl``; ``selftrain`` (as a run trains: frozen bottom layers computed once per
sequence, LoRA layers as one matmul in fp32); ``plain``: selftrain with both switched off
(``student.frozen_cache: false``, ``student.fused_lora: false``), the code path before them,
so the gain is measured in the same run.

Timed: every optimizer step (TRL: ``train()``; selftrain: ``train_sft``, the cache included).
tokens/s = the demonstrations' tokens (prompt + completion, no padding) times the epochs, per
second. Runs alternate (TRL, plain, selftrain, ...) after a one-step warm-up; the median
counts. MFU: the same useful FLOPs for every engine (``_common.FlopModel``: the full forward,
the backward of the adapted layers) over the measured matmul rate, so an engine that skips
work (the cache) can pass what it computes. Peak memory as in benchmarks/dpo.py.

    python benchmarks/sft.py --quick           # 32 demonstrations x 3 epochs, LoRA
    python benchmarks/sft.py                   # 256 x 6 epochs, LoRA and full

The last line is ``speedup X.XX``: the geometric mean over the modes of
(selftrain tokens/s) / (TRL tokens/s).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import dpo as D
import torch


def make_demos(student, n: int) -> list[tuple[list[int], list[int]]]:
    """(prompt, gold rationale + EOS) token ids of the first ``n`` train questions (the
    default recipe's stage-1 demonstrations)."""
    task, examples = C.questions(n)
    return [
        (student.prompt_ids(task.prompt(e)), student.completion_ids(task.demonstration(e)))
        for e in examples
    ]


def _selftrain(model, tokenizer, data, args, lora: bool, fast: bool) -> dict:
    from selftrain.config import OptimizerConfig
    from selftrain.models import Student
    from selftrain.training.sft import train_sft

    torch.manual_seed(args.seed)
    cfg = D.student_cfg(args, lora).model_copy(update={"frozen_cache": fast, "fused_lora": fast})
    student = Student(model, tokenizer, cfg)
    t0 = time.perf_counter()
    opt = OptimizerConfig(
        lr=args.lr, batch_size=args.batch_size, weight_decay=0.0, warmup_ratio=0.0
    )  # as TRL's SFTTrainer below
    res = train_sft(student, data, opt, epochs=args.epochs, seed=args.seed)
    return {"train_s": time.perf_counter() - t0, "steps": res.steps}


def run_selftrain(model, tokenizer, data, args, lora: bool) -> dict:
    return _selftrain(model, tokenizer, data, args, lora, fast=True)


def run_plain(model, tokenizer, data, args, lora: bool) -> dict:
    return _selftrain(model, tokenizer, data, args, lora, fast=False)


def run_trl(model, tokenizer, data, args, lora: bool) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    torch.manual_seed(args.seed)
    peft = D.lora_config(D.student_cfg(args, lora), model) if lora else None
    ds = Dataset.from_dict(
        {
            "input_ids": [p + c for p, c in data],
            "labels": [[-100] * len(p) + c for p, c in data],
        }
    )
    with tempfile.TemporaryDirectory() as out:
        cfg = SFTConfig(
            output_dir=out,
            per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            weight_decay=0.0,
            num_train_epochs=args.epochs,
            max_length=None,
            packing=False,
            gradient_checkpointing=args.trl_checkpointing,
            bf16=args.dtype == "bf16",
            use_cpu=not torch.cuda.is_available(),
            report_to=[],
            save_strategy="no",
            logging_steps=10,
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=args.seed,
        )
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=ds,
            processing_class=tokenizer,
            peft_config=peft,
        )
        D.quiet(trainer)
        t0 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t0
    return {"train_s": train_s, "steps": trainer.state.global_step}


ENGINES = {"trl": run_trl, "plain": run_plain, "selftrain": run_selftrain}


def child(args) -> None:
    engine, mode = args.child.split(",")
    model, tok = D.load(args)
    data = make_demos(D._prompt_student(model, tok, args), args.demos)
    with C.PeakMemory() as mem:  # the model is loaded: what training adds to it
        out = ENGINES[engine](model, tok, data, args, mode == "lora")
    print(json.dumps({"peak_mib": mem.mib, **out}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    C.add_training_args(parser, lr=5e-4)
    parser.add_argument("--demos", type=int, default=None, help="default 256 (quick: 32)")
    parser.add_argument("--epochs", type=int, default=None, help="default 6 (quick: 3)")
    args = parser.parse_args()
    args.demos = args.demos or (32 if args.quick else 256)
    args.epochs = args.epochs or (3 if args.quick else 6)
    args.modes = args.modes or ("lora" if args.quick else "lora,full")
    repeats = args.repeats or (2 if args.quick else 3)
    C.setup_threads(args.threads)
    if args.child:
        child(args)
        return
    dtype = C.resolve_dtype(args)
    print(f"machine: {C.machine()}; precision: {dtype} (--dtype auto: the probe's choice)")
    base, tok = D.load(args)
    data = make_demos(D._prompt_student(base, tok, args), args.demos)
    tokens = args.epochs * sum(len(p) + len(c) for p, c in data)
    flops = C.FlopModel.of(base)
    peak = C.matmul_rate(torch.bfloat16 if dtype == "bf16" else torch.float32)
    print(
        f"sft: {C.short_name(args.model)}, {len(data)} demonstrations x {args.epochs} epochs "
        f"({tokens} tokens), batch {args.batch_size}, {dtype}, {repeats} timed runs each "
        f"(median), alternating; matmul peak {peak / 1e9:.0f} GFLOP/s ({dtype})",
        flush=True,
    )
    rows, speedups, results = [], [], []
    for mode in args.modes.split(","):
        lora = mode == "lora"
        trained = D.student_cfg(args, True).lora.top_layers if lora else None
        stage_flops = args.epochs * sum(
            flops.train_step(len(p) + len(c), len(c), trained) for p, c in data
        )

        def runner(engine, subset, epochs, lora=lora):
            def run():
                a = copy.copy(args)
                a.epochs = epochs
                out = ENGINES[engine](copy.deepcopy(base), tok, subset, a, lora)
                return tokens, out["train_s"]

            return run

        warm = data[: args.batch_size]
        timings = C.alternate(
            {e: runner(e, data, args.epochs) for e in ENGINES},
            repeats,
            {e: runner(e, warm, 1) for e in ENGINES},
        )
        extra = ["--demos", str(min(args.demos, 2 * args.batch_size)), "--epochs", "1"]
        memory = C.child_peak_memory(Path(__file__), ENGINES, mode, args, extra)
        for engine, t in timings.items():
            rate = t.rate()
            mfu = stage_flops * rate / tokens / peak
            runs = " ".join(f"{s:.1f}" for s in t.seconds)
            rows.append([mode, engine, runs, rate, f"{100 * mfu:.1f}%", memory.get(engine, "-")])
        results.append(C.compare_to_trl(mode, timings, memory))
        results[-1]["vs_plain"] = timings["selftrain"].rate() / timings["plain"].rate()
        speedups.append(results[-1]["speedup"])
        rows.append([mode, "speedup vs trl", "", speedups[-1], "", ""])
        rows.append([mode, "selftrain vs plain", "", results[-1]["vs_plain"], "", ""])
    print(C.table(rows, ["mode", "engine", "seconds per run", "tok/s", "MFU", "peak MiB"]))
    C.finish(args, results, speedups)


if __name__ == "__main__":
    main()
