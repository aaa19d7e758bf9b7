"""MFU: selftrain's training steps' achieved FLOP/s over this CPU's measured matmul rate.

The matmul rate is measured here: the best of repeated n x n products (fp32 and bf16; n =
1024 and 2048), 2 n^3 FLOPs each. A training step's FLOPs are counted from the model's
weights (benchmarks/_common.py ``FlopModel``): per sequence of L tokens with C labelled,
forward = 2 P_layers L + 4 A n_layers L(L+1)/2 + 2 P_head C (A = heads x head_dim; the output
layer only where a label is, as selftrain computes it); backward = 2x forward for full
fine-tuning, 1x the forward of the adapted layers and the output layer for LoRA (activation
gradients only; no weight gradients for frozen weights; nothing below the lowest adapted
layer). A DPO step counts the chosen and the rejected sequence each with its own prompt, as
TRL runs them; selftrain's packed rows run the prompt once, so its hardware FLOPs are lower
than the count (the MFU here is "useful" FLOPs, comparable across engines).

    python benchmarks/mfu.py --quick
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C
import dpo as D
import sft as S
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    C.add_common_args(parser)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=None, help="default 8 (quick: 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    steps = args.steps or (2 if args.quick else 8)
    args.lr, args.ref_batch_size, args.trl_checkpointing = 5e-5, 16, False
    C.setup_threads(args.threads)
    C.resolve_dtype(args)
    print(f"machine: {C.machine()}; precision: {args.dtype} (--dtype auto: the probe's choice)")
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        for n in (1024, 2048):
            rates[(dtype, n)] = C.matmul_rate(dtype, n, seconds=1.0 if args.quick else 3.0)
    for (dtype, n), r in rates.items():
        print(f"matmul {str(dtype)[6:]} {n}x{n}: {r / 1e9:.0f} GFLOP/s")
    peak = max(r for (d, _), r in rates.items() if (d == torch.bfloat16) == (args.dtype == "bf16"))
    base, tok = D.load(args)
    flops = C.FlopModel.of(base)
    student = D._prompt_student(base, tok, args)
    n = steps * args.batch_size
    pairs = D.make_pairs(student, n)
    demos = S.make_demos(student, n)
    rows = []
    for mode in ("lora", "full"):
        lora = mode == "lora"
        trained = D.student_cfg(args, True).lora.top_layers if lora else None
        # DPO training steps (the reference pass is timed apart: forward only)
        args.pairs = n
        out = D.run_selftrain(copy.deepcopy(base), tok, pairs[: args.batch_size], args, lora)
        out = D.run_selftrain(copy.deepcopy(base), tok, pairs, args, lora)
        ref_flops = sum(flops.forward(len(p) + len(x), len(x)) for p, c, r in pairs for x in (c, r))
        step_flops = sum(
            flops.train_step(len(p) + len(x), len(x), trained) for p, c, r in pairs for x in (c, r)
        )
        rows.append([f"dpo {mode}", "reference", out["ref_s"], ref_flops / out["ref_s"]])
        rows.append([f"dpo {mode}", "train steps", out["train_s"], step_flops / out["train_s"]])
        sft_s = S.run_selftrain(copy.deepcopy(base), tok, demos, args, lora)["train_s"]
        sft_flops = sum(flops.train_step(len(p) + len(c), len(c), trained) for p, c in demos)
        rows.append([f"sft {mode}", "train steps", sft_s, sft_flops / sft_s])
    print(
        f"{C.short_name(args.model)}, {args.dtype}, {steps} steps of {args.batch_size}; "
        f"MFU = achieved / {peak / 1e9:.0f} GFLOP/s (the best {args.dtype} matmul above)"
    )
    table = [[a, b, s, f / 1e9, f"{100 * f / peak:.1f}%"] for a, b, s, f in rows]
    print(C.table(table, ["stage", "part", "seconds", "GFLOP/s", "MFU"]))
    dpo_train = [r for r in rows if r[0].startswith("dpo") and r[1] == "train steps"]
    print(f"mfu {100 * max(r[3] for r in dpo_train) / peak:.1f}%")


if __name__ == "__main__":
    main()
