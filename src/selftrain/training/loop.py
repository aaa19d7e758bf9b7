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


def can_pack_pairs(student: Student) -> bool:
    """Whether the student's attention takes the boolean 4D masks of :func:`collate_pairs`
    (SDPA does; eager attention adds masks as floats)."""
    config = getattr(student.model, "config", None)
    return getattr(config, "_attn_implementation", None) == "sdpa"


def collate_pairs(
    pairs: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int, device
) -> dict[str, torch.Tensor]:
    """Pack each ``(prompt, chosen, rejected)`` into one row, ``prompt + chosen + rejected``,
    so the prompt is run once for both answers (DPO's prompts are a third to a half of its
    tokens here).

    The rejected tokens take the positions right after the prompt and attend to the prompt
    and to themselves, never to the chosen tokens, so each answer sees exactly what it would
    see alone. Returns input ids, position ids, a ``[B, 1, L, L]`` boolean attention mask
    (padding attends to itself only, so no row of it is empty), and for every labelled
    token: its row, the position whose hidden state predicts it (for the first rejected
    token: the prompt's last), its id, and its sequence (``i`` for pair ``i``'s chosen,
    ``n + i`` for its rejected, as in ``collate`` of chosen then rejected)."""
    n = len(pairs)
    width = max(len(p) + len(c) + len(r) for p, c, r in pairs)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    pos = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected
    rows, src, tgt, seq = [], [], [], []
    for i, (p, c, r) in enumerate(pairs):
        lp, lc, lr = len(p), len(c), len(r)
        ids[i, : lp + lc + lr] = torch.tensor(p + c + r)
        pos[i, : lp + lc] = torch.arange(lp + lc)
        pos[i, lp + lc : lp + lc + lr] = torch.arange(lp, lp + lr)
        segment[i, :lp] = 0
        segment[i, lp : lp + lc] = 1
        segment[i, lp + lc : lp + lc + lr] = 2
        chosen_src = list(range(lp - 1, lp + lc - 1))
        rejected_src = [lp - 1, *range(lp + lc, lp + lc + lr - 1)] if lr else []
        rows += [i] * (lc + lr)
        src += chosen_src + rejected_src
        tgt += c + r
        seq += [i] * lc + [n + i] * lr
    q, k = segment[:, :, None], segment[:, None, :]
    causal = torch.ones((width, width), dtype=torch.bool).tril()
    mask = causal & (q >= 0) & ((k == 0) | (k == q))
    mask |= torch.eye(width, dtype=torch.bool)  # padding: itself only
    out = {"input_ids": ids, "position_ids": pos, "attention_mask": mask[:, None]}
    for name, values in (("rows", rows), ("src", src), ("targets", tgt), ("seq", seq)):
        out[name] = torch.tensor(values, dtype=torch.long)
    return {name: t.to(device) for name, t in out.items()}


def packed_pair_logps(
    student: Student, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probabilities and token counts of a :func:`collate_pairs` batch: ``[2n]``,
    the n chosen answers then the n rejected ones (as :func:`token_logps` of ``collate`` of
    chosen then rejected sequences)."""
    model = student.model
    n = batch["input_ids"].shape[0]
    with student.autocast():
        hidden = model.get_decoder()(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
        ).last_hidden_state
        logits = model.get_output_embeddings()(hidden[batch["rows"], batch["src"]])
    nll = F.cross_entropy(logits.float(), batch["targets"], reduction="none")
    logp = torch.zeros(2 * n, dtype=nll.dtype, device=nll.device).index_add(0, batch["seq"], -nll)
    count = torch.bincount(batch["seq"], minlength=2 * n)
    return logp, count


def pair_logps(
    student: Student, pairs: Sequence[tuple[list[int], list[int], list[int]]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``[2n]`` summed log-probs and counts of the pairs' chosen then rejected answers:
    packed (:func:`collate_pairs`) where the attention takes it (and every prompt has a
    token to predict the first answer token from), else one padded sequence per answer."""
    if can_pack_pairs(student) and all(p for p, _, _ in pairs):
        return packed_pair_logps(student, collate_pairs(pairs, student.pad_id, student.device))
    seqs = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    ids, mask, labels = collate(seqs, student.pad_id, student.device)
    return token_logps(student, ids, mask, labels)


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
