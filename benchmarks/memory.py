"""GPU memory each stage needs for a 7B student (Llama-2-7B), computed from its shape, not
measured: weights, gradients, AdamW state, KV cache and activations, per GPU.

    python benchmarks/memory.py            # the README table (Markdown)
    python benchmarks/memory.py --gpus 4 --seq 1024 --micro 2

Assumptions (printed with the table): sequences of ``--seq`` tokens (GSM8K: a prompt of ~150
tokens and a rationale of at most 300), ``--micro`` sequences per forward pass, gradient
checkpointing on (activations: each layer's input kept, one layer's internals recomputed at a
time), logits only at scored positions (selftrain's TokenScorer), the DPO reference log-probs
computed once before training (no reference model in memory), LoRA r=16 on every linear layer
of every block with fp32 adapters, QLoRA's base in NF4 with double quantisation (~4.13 bits a
weight) and the embeddings and output layer in bf16, full fine-tuning with fp32 master weights
and AdamW state and bf16 matmuls, sharded over ``--gpus`` GPUs by FSDP2 with the student's own
full copy in CPU memory while the shards train. CUDA's context and allocator slack (~1-3 GB)
are not included.
"""

from __future__ import annotations

import argparse

GB = 1024**3

LLAMA2_7B = {
    "hidden": 4096,
    "intermediate": 11008,
    "layers": 32,
    "heads": 32,
    "kv_heads": 32,
    "vocab": 32000,
}


def parameters(c: dict) -> tuple[int, int]:
    """(all, those in the blocks' linear layers)."""
    h, i, n = c["hidden"], c["intermediate"], c["layers"]
    kv = h * c["kv_heads"] // c["heads"]
    linear = n * (2 * h * h + 2 * h * kv + 3 * h * i)
    embed = 2 * c["vocab"] * h
    norms = (2 * n + 1) * h
    return linear + embed + norms, linear


def lora_parameters(c: dict, r: int) -> int:
    h, i, n = c["hidden"], c["intermediate"], c["layers"]
    kv = h * c["kv_heads"] // c["heads"]
    shapes = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)]
    return n * r * sum(a + b for a, b in shapes)


def activations(c: dict, tokens: int) -> float:
    """Bytes of activations for ``tokens`` tokens in flight with gradient checkpointing (bf16):
    every layer's input, one layer's internals (attention and MLP intermediates), and fp32
    logits at the scored positions (half the tokens)."""
    h, i, n = c["hidden"], c["intermediate"], c["layers"]
    kept = n * tokens * h * 2
    one_layer = tokens * (10 * h + 4 * i) * 2
    logits = (tokens // 2) * c["vocab"] * 4 * 2  # logits and their gradient
    return kept + one_layer + logits


def kv_cache(c: dict, tokens: int) -> float:
    kv = c["hidden"] * c["kv_heads"] // c["heads"]
    return 2 * c["layers"] * kv * 2 * tokens


def table(c: dict, gpus: int, seq: int, micro: int, rows: int, r: int) -> list[tuple]:
    total, linear = parameters(c)
    lora = lora_parameters(c, r)
    adapters = lora * (4 + 4 + 8)  # fp32 weights, gradients, AdamW's two moments
    act_sft = activations(c, micro * seq)
    act_dpo = activations(c, micro * int(seq * 1.6))  # prompt + chosen + rejected in one row
    bf16_weights = total * 2
    nf4_weights = linear * 4.127 / 8 + (total - linear) * 2
    sample = kv_cache(c, rows * seq)
    full_state = total * (4 + 4 + 8)  # fp32 weights, gradients, AdamW moments
    full_layer = 2 * (linear // c["layers"]) * 4  # two layers' fp32 weights all-gathered
    return [
        (
            "LoRA (bf16 base)",
            bf16_weights + sample,
            bf16_weights + adapters + act_sft,
            bf16_weights + adapters + act_dpo,
            1,
        ),
        (
            "QLoRA (NF4 base)",
            nf4_weights + sample,
            nf4_weights + adapters + act_sft,
            nf4_weights + adapters + act_dpo,
            1,
        ),
        (
            "full fine-tuning, 1 GPU",
            bf16_weights + total * 4 + sample,
            full_state + act_sft,
            full_state + act_dpo,
            1,
        ),
        (
            f"full fine-tuning, FSDP2 over {gpus}",
            total * 4 + bf16_weights + sample,
            full_state / gpus + full_layer + act_sft,
            full_state / gpus + full_layer + act_dpo,
            gpus,
        ),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--micro", type=int, default=4, help="sequences per forward pass")
    ap.add_argument("--rows", type=int, default=128, help="sequences decoded together")
    ap.add_argument("--lora-r", type=int, default=16)
    args = ap.parse_args()
    c = LLAMA2_7B
    total, _ = parameters(c)
    print(
        f"Llama-2-7B: {total / 1e9:.2f}B parameters; LoRA r={args.lora_r}: "
        f"{lora_parameters(c, args.lora_r) / 1e6:.1f}M; {args.seq} tokens a sequence, "
        f"micro-batch {args.micro}, {args.rows} sequences decoded together; GiB per GPU, computed\n"
    )
    print("| student | sampling / evaluation | SFT | DPO |")
    print("|---|---|---|---|")
    for name, sample, sft, dpo, _ in table(
        c, args.gpus, args.seq, args.micro, args.rows, args.lora_r
    ):
        print(f"| {name} | {sample / GB:.1f} | {sft / GB:.1f} | {dpo / GB:.1f} |")
    print(
        f"\nSampling holds the weights in bf16 (NF4 for QLoRA; full fine-tuning adds its fp32 "
        f"master copy, {total * 4 / GB:.1f} GiB, which FSDP2 runs keep in CPU memory while "
        f"training) and a KV cache of {kv_cache(c, args.rows * args.seq) / GB:.1f} GiB; the "
        f"built-in sampler adds its merged bf16 copy of a LoRA student "
        f"({total * 2 / GB:.1f} GiB) where that fits, vLLM holds its own copy instead."
    )


if __name__ == "__main__":
    main()
