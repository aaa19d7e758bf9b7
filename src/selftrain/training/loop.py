"""Pieces shared by the SFT and DPO loops: batching, log-probs, optimizer and schedule."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selftrain.models import Student


def collate(
    seqs: Sequence[tuple[list[int], list[int]]], pad_id: int, device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad ``(prompt_ids, completion_ids)`` pairs into input ids, attention mask and
    labels. Labels cover the completion only (its EOS included); prompt and padding are -100,
    set from lengths, so a pad id equal to EOS never hides the EOS."""
    width = max(len(p) + len(c) for p, c in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (p, c) in enumerate(seqs):
        n = len(p) + len(c)
        ids[i, :n] = torch.tensor(p + c)
        mask[i, :n] = 1
        labels[i, len(p) : n] = torch.tensor(c)
    return ids.to(device), mask.to(device), labels.to(device)


def token_logps(
    student: Student, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of the labelled tokens, and their count.

    The output layer (49k x 576 for SmolLM2: a fifth of the model's compute per token) is
    applied only where a label is, not over the prompt and padding as a plain forward would.
    """
    target = labels[:, 1:]
    where = target != -100
    model = student.model
    with student.autocast():
        hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        logits = model.get_output_embeddings()(hidden[:, :-1][where])
    nll = F.cross_entropy(logits.float(), target[where], reduction="none")
    rows = where.nonzero()[:, 0]
    logp = torch.zeros(ids.shape[0], dtype=nll.dtype, device=nll.device).index_add(0, rows, -nll)
    return logp, where.sum(-1)


def batches(n: int, batch_size: int, rng: random.Random, lengths: Sequence[int]) -> list[list[int]]:
    """Shuffled batches of indexes; within windows of 16 batches, items are sorted by length
    so each batch pads little while the order stays random."""
    idx = list(range(n))
    rng.shuffle(idx)
    window = batch_size * 16
    out = []
    for w in range(0, n, window):
        chunk = sorted(idx[w : w + window], key=lambda i: lengths[i])
        out.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(out)
    return out


def optimizer_and_schedule(
    params: list[torch.nn.Parameter],
    lr: float,
    weight_decay: float,
    total: int,
    warmup_ratio: float,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with linear warm-up then cosine decay to zero over ``total`` steps."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(total * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)
