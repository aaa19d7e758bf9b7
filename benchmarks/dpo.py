"""DPO: selftrain's DPO stage vs TRL's ``DPOTrainer`` (PyPI), tokens/s, peak memory, MFU.

Both engines train the same model weights on the same preference pairs (token ids: prompt,
chosen, rejected), with the same LoRA adapters (the default recipe's: r=16, alpha=32, every
linear map of the top 15 layers) or full fine-tuning, the same batch (pairs per optimizer
step), learning rate and schedule, one epoch, the sigmoid loss with beta=0.1, and the same
precision (``--dtype auto``: what the default recipe's probe picks here; or bf16, float32).
Both compute the reference log-probs once, from the policy before training, with no second
model: selftrain's ``reference_logps`` and TRL's ``precompute_ref_log_probs=True``. TRL gets
its fastest settings that keep the results: gradient checkpointing off (``--trl-checkpointing``
turns its default back on), a pre-tokenized dataset (tokenizing is not timed for either).

Timed: reference log-probs + every optimizer step (TRL: ``_precompute_ref_logps`` + ``train()``).
tokens/s = the pairs' tokens (prompt + chosen and prompt + rejected, no padding) per second of
that. Runs alternate (TRL, selftrain, ...) after an untimed warm-up; the median counts.
Peak memory: each engine and mode once more in a fresh subprocess, the kernel's peak RSS
(VmHWM, reset after the model is loaded) minus the RSS at that reset. MFU: the FLOPs of the
stage (benchmarks/_common.py FlopModel: reference forward + training forward and backward)
per second over this CPU's measured matmul rate in the same precision.

    python benchmarks/dpo.py --quick
    python benchmarks/dpo.py                   # 128 pairs, LoRA and full fine-tuning

The last line is ``speedup X.XX``: the geometric mean over the modes of
(selftrain tokens/s) / (TRL tokens/s).
"""

from __future__ import annotations

import argparse
import copy
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import torch

LORA = {"r": 16, "alpha": 32, "dropout": 0.0, "top_layers": 15}


def make_pairs(student, n: int, seed: int = 0) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt, chosen, rejected) token ids as the pipeline builds them: chosen = the gold
    rationale + EOS; rejected = the same path with one line's result wrong, cut after that
    line (no EOS), as ``pairs.truncate_rejected`` cuts a sampled wrong path."""
    task, examples = C.questions(n, offset=288)
    rng = random.Random(seed)
    pairs = []
    for e in examples:
        gold = task.demonstration(e)
        lines = gold.split("\n")
        j = rng.randrange(len(lines) - 1)  # a step line, not the '#### N' line
        head, _, result = lines[j].rpartition(">>")
        wrong = f"{head}>>{int(result) + rng.choice([-2, -1, 1, 2, 10])}"
        rejected = "\n".join([*lines[:j], wrong]) + "\n"
        pairs.append(
            (
                student.prompt_ids(task.prompt(e)),
                student.completion_ids(gold),
                student.completion_ids(rejected, eos=False),
            )
        )
    return pairs


def pair_tokens(pairs) -> int:
    return sum(2 * len(p) + len(c) + len(r) for p, c, r in pairs)


def lora_config(student_cfg, model):
    """The peft LoraConfig selftrain builds for ``student_cfg`` (the same one goes to TRL)."""
    from peft import LoraConfig

    from selftrain.models import linear_names as _linear_names

    lc = student_cfg.lora
    n = model.config.num_hidden_layers
    layers = list(range(max(0, n - lc.top_layers), n)) if lc.top_layers else None
    return LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=_linear_names(model),
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def student_cfg(args, lora: bool):
    from selftrain.config import LoraConfig, StudentConfig

    model = "tiny-llama" if args.model == "tiny" else args.model
    top = min(LORA["top_layers"], 2) if model.startswith("tiny") else LORA["top_layers"]
    return StudentConfig(
        model=model,
        autocast_bf16=args.dtype == "bf16",
        lora=LoraConfig(
            enabled=lora, r=LORA["r"], alpha=LORA["alpha"], dropout=0.0, top_layers=top
        ),
    )


def dpo_cfg(args):
    from selftrain.config import DPOConfig

    return DPOConfig(
        loss="sigmoid",
        beta=0.1,
        lr=args.lr,
        batch_size=args.batch_size,
        epochs=1,
        warmup_ratio=0.1,
        nll_weight=0.0,
        grad_clip=1.0,
    )


def run_selftrain(model, tokenizer, pairs, args, lora: bool) -> dict:
    """selftrain's DPO stage on ``model`` (trained in place): reference log-probs, then
    ``train_dpo``. Returns the seconds of each part and the steps taken."""
    from selftrain.models import Student
    from selftrain.training.dpo import reference_logps, train_dpo

    torch.manual_seed(args.seed)
    student = Student(model, tokenizer, student_cfg(args, lora))
    t0 = time.perf_counter()
    ref = reference_logps(student, pairs, batch_size=args.ref_batch_size)
    t1 = time.perf_counter()
    res = train_dpo(student, pairs, dpo_cfg(args), seed=args.seed, ref=ref)
    t2 = time.perf_counter()
    return {
        "ref_s": t1 - t0,
        "train_s": t2 - t1,
        "steps": res.steps,
        "loss": res.history[-1]["loss"],
    }


def trl_trainer_class():
    from trl import DPOTrainer

    class PretokenizedDPOTrainer(DPOTrainer):
        """DPOTrainer that takes a dataset already holding prompt/chosen/rejected token ids
        (its own preparation tokenizes text), and records how long its reference pass took."""

        ref_seconds = 0.0

        def _prepare_dataset(self, dataset, *args, **kwargs):
            if "prompt_ids" in dataset.column_names:
                return dataset
            return super()._prepare_dataset(dataset, *args, **kwargs)

        def _precompute_ref_logps(self, *args, **kwargs):
            start = time.perf_counter()
            try:
                return super()._precompute_ref_logps(*args, **kwargs)
            finally:
                self.ref_seconds += time.perf_counter() - start

    return PretokenizedDPOTrainer


def trl_dataset(pairs):
    from datasets import Dataset

    ds = Dataset.from_dict(
        {
            "prompt_ids": [p for p, _, _ in pairs],
            "chosen_ids": [c for _, c, _ in pairs],
            "rejected_ids": [r for _, _, r in pairs],
        }
    )
    ds._fingerprint = uuid.uuid4().hex  # no reference log-probs cached from an earlier run
    return ds


def trl_args(args, out_dir: str):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.1,  # a ratio of the steps
        max_grad_norm=1.0,
        weight_decay=0.0,
        num_train_epochs=1,
        beta=0.1,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        precompute_ref_batch_size=args.ref_batch_size,
        max_length=None,
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


def run_trl(model, tokenizer, pairs, args, lora: bool) -> dict:
    """TRL's DPOTrainer on ``model`` (trained in place); the same returns as
    :func:`run_selftrain` (its reference seconds: ``_precompute_ref_logps``)."""
    cls = trl_trainer_class()
    torch.manual_seed(args.seed)
    peft = lora_config(student_cfg(args, lora), model) if lora else None
    with tempfile.TemporaryDirectory() as out:
        trainer = cls(
            model=model,
            args=trl_args(args, out),
            train_dataset=trl_dataset(pairs),
            processing_class=tokenizer,
            peft_config=peft,
        )
        quiet(trainer)
        t1 = time.perf_counter()
        trainer.train()
        t2 = time.perf_counter()
    return {
        "ref_s": trainer.ref_seconds,
        "train_s": t2 - t1,
        "steps": trainer.state.global_step,
        "loss": trainer.state.log_history[-1].get("train_loss"),
    }


def quiet(trainer) -> None:
    """No per-log print from the Trainer (its logging itself still runs, as for a user)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)


ENGINES = {"trl": run_trl, "selftrain": run_selftrain}


def load(args):
    from selftrain.models import load_model_and_tokenizer

    cfg = student_cfg(args, lora=False)
    return load_model_and_tokenizer(cfg, args.device)


def child(args) -> None:
    """One engine, one mode, in this fresh process: print its peak memory as JSON."""
    import json

    engine, mode = args.child.split(",")
    model, tok = load(args)
    student = _prompt_student(model, tok, args)
    pairs = make_pairs(student, args.pairs)
    with C.PeakMemory() as mem:  # the model is loaded: what training adds to it
        out = ENGINES[engine](model, tok, pairs, args, mode == "lora")
    print(json.dumps({"peak_mib": mem.mib, "resettable": getattr(mem, "resettable", True), **out}))


def _prompt_student(model, tok, args):
    from selftrain.models import Student

    return Student(model, tok, student_cfg(args, lora=False))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    C.add_training_args(parser, lr=5e-5)  # --batch-size: pairs per optimizer step
    parser.add_argument("--pairs", type=int, default=None, help="default 128 (quick: 16)")
    parser.add_argument("--ref-batch-size", type=int, default=16)
    args = parser.parse_args()
    args.pairs = args.pairs or (16 if args.quick else 128)
    args.modes = args.modes or ("lora" if args.quick else "lora,full")
    repeats = args.repeats or (2 if args.quick else 3)
    C.setup_threads(args.threads)
    if args.child:
        child(args)
        return
    C.resolve_dtype(args)
    print(f"machine: {C.machine()}; precision: {args.dtype} (--dtype auto: the probe's choice)")
    base, tok = load(args)
    pairs = make_pairs(_prompt_student(base, tok, args), args.pairs)
    tokens = pair_tokens(pairs)
    flops = C.FlopModel.of(base)
    peak = C.matmul_rate(torch.bfloat16 if args.dtype == "bf16" else torch.float32)
    print(
        f"dpo: {C.short_name(args.model)}, {len(pairs)} pairs ({tokens} tokens), batch "
        f"{args.batch_size} pairs, 1 epoch, {args.dtype}, {repeats} timed runs each (median), "
        f"alternating; matmul peak {peak / 1e9:.0f} GFLOP/s ({args.dtype})",
        flush=True,
    )
    rows, speedups, results = [], [], []
    for mode in args.modes.split(","):
        lora = mode == "lora"
        details: dict[str, list[dict]] = {e: [] for e in ENGINES}

        def runner(engine, data, lora=lora, details=details):
            def run():
                out = ENGINES[engine](copy.deepcopy(base), tok, data, args, lora)
                details[engine].append(out)
                return tokens, out["ref_s"] + out["train_s"]

            return run

        warm = pairs[: args.batch_size]  # one step: imports, allocator, thread pools
        timings = C.alternate(
            {e: runner(e, pairs) for e in ENGINES}, repeats, {e: runner(e, warm) for e in ENGINES}
        )
        stage_flops = _stage_flops(
            flops, pairs, None if not lora else student_cfg(args, True).lora.top_layers
        )
        extra = ["--pairs", str(min(args.pairs, 2 * args.batch_size))]
        extra += ["--ref-batch-size", str(args.ref_batch_size)]
        memory = C.child_peak_memory(Path(__file__), ENGINES, mode, args, extra)
        for engine, t in timings.items():
            runs = details[engine][-repeats:]
            rate = t.rate()
            mfu = stage_flops * rate / tokens / peak
            rows.append(
                [
                    mode,
                    engine,
                    runs[0]["steps"],
                    " ".join(f"{s:.1f}" for s in t.seconds),
                    sum(r["ref_s"] for r in runs) / len(runs),
                    rate,
                    f"{100 * mfu:.1f}%",
                    memory.get(engine, "-"),
                ]
            )
        results.append(C.compare_to_trl(mode, timings, memory))
        speedups.append(results[-1]["speedup"])
        rows.append([mode, "speedup", "", "", "", speedups[-1], "", ""])
    header = ["mode", "engine", "steps", "seconds per run", "ref s", "tok/s", "MFU", "peak MiB"]
    print(C.table(rows, header))
    C.finish(args, results, speedups)


def _stage_flops(flops: C.FlopModel, pairs, trained_layers: int | None) -> float:
    """FLOPs of the DPO stage: the reference forward and one training step per sequence."""
    total = 0.0
    for p, c, r in pairs:
        for comp in (c, r):
            n = len(p) + len(comp)
            total += flops.forward(n, len(comp)) + flops.train_step(n, len(comp), trained_layers)
    return total


if __name__ == "__main__":
    main()
