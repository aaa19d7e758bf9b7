"""Batched generation of k completions per prompt with a KV cache (transformers' generate).

Prompts are sorted by length so a batch carries little padding, and each batch holds whole
prompts (all k samples of a prompt together) so callers can write results per prompt and a
rerun can skip prompts already done.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from selftrain.models import Student


@dataclass(frozen=True)
class SamplingParams:
    k: int = 1
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    batch_size: int = 64  # sequences decoded together (prompts per batch = batch_size // k)
    seed: int = 0


def generate(
    student: Student,
    items: Sequence[tuple[Any, list[int]]],
    params: SamplingParams,
    on_tokens: Callable[[int], None] | None = None,
) -> Iterator[list[tuple[Any, list[str], list[int]]]]:
    """Yield, per batch, ``(key, k completion texts, k completion token counts)`` for each
    ``(key, prompt_ids)`` item. ``on_tokens`` receives the number of tokens each batch made."""
    from transformers import GenerationConfig

    model = student.model
    per_batch = max(1, params.batch_size // params.k)
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    gen_cfg = GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not params.greedy,
        temperature=params.temperature if not params.greedy else None,
        top_p=params.top_p if not params.greedy else None,
        top_k=0 if not params.greedy else None,
        num_return_sequences=params.k,
        eos_token_id=student.eos_id,
        pad_token_id=student.pad_id,
    )
    was_training = model.training
    model.eval()
    try:
        for b, start in enumerate(range(0, len(order), per_batch)):
            batch = [items[i] for i in order[start : start + per_batch]]
            ids, mask = _left_pad([p for _, p in batch], student.pad_id, student.device)
            torch.manual_seed(params.seed * 1_000_003 + b)
            with torch.no_grad(), student.autocast():
                out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
            new = out[:, ids.shape[1] :].tolist()
            results, made = [], 0
            for j, (key, _) in enumerate(batch):
                texts, lengths = [], []
                for seq in new[j * params.k : (j + 1) * params.k]:
                    seq = _until_eos(seq, student.eos_id)
                    texts.append(student.decode(seq))
                    lengths.append(len(seq))
                    made += len(seq)
                results.append((key, texts, lengths))
            if on_tokens:
                on_tokens(made)
            yield results
    finally:
        model.train(was_training)


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def _until_eos(seq: list[int], eos_id: int) -> list[int]:
    return seq[: seq.index(eos_id)] if eos_id in seq else seq
