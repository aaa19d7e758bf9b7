"""Batched generation of k completions per prompt with a KV cache.

Prompts are sorted by length so a batch carries little padding, and each batch holds whole
prompts (all k samples of a prompt together) so callers can write results per prompt and a
rerun can skip prompts already done.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from selftrain import calculator
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
    calculator: bool = False  # fill in ``<<expr=`` annotations (see selftrain.calculator)
    stop: str | None = None  # regex: a row stops once its text matches it at the end


class StopHook:
    """Stops a sequence whose text matches ``pattern`` at its end (checked only after tokens
    holding a newline or a colon, so the tail is rarely decoded)."""

    def __init__(self, tokenizer: Any, pattern: str):
        self.tokenizer = tokenizer
        self.pattern = re.compile(f"(?:{pattern})$", re.IGNORECASE)
        vocab = tokenizer.get_vocab()
        self.triggers = {
            i for i in vocab.values() if any(c in tokenizer.decode([i]) for c in "\n:")
        }

    def done(self, tokens: list[int]) -> bool:
        if not tokens or tokens[-1] not in self.triggers:
            return False
        return self.pattern.search(self.tokenizer.decode(tokens[-96:])) is not None


class CalculatorHook:
    """Forces a calculator's result into sequences that end in an open ``<<expr=``.

    Only tokens whose text ends in ``=`` can open a result, so the tail of a sequence is
    decoded (and the expression parsed) only after one of those."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.triggers = {i for i in vocab.values() if tokenizer.decode([i]).endswith("=")}

    def forced(self, tokens: list[int]) -> list[int]:
        """Token ids to force after ``tokens`` (empty when nothing is to be filled in)."""
        if not tokens or tokens[-1] not in self.triggers:
            return []
        text = self.tokenizer.decode(tokens[-calculator.MAX_EXPRESSION_CHARS :])
        result = calculator.fill(text)
        if result is None:
            return []
        return self.tokenizer.encode(result, add_special_tokens=False)


_HOOKS: dict[int, CalculatorHook] = {}


def calculator_hook(tokenizer: Any) -> CalculatorHook:
    """The (cached) calculator hook of ``tokenizer``."""
    key = id(tokenizer)
    if key not in _HOOKS:
        _HOOKS[key] = CalculatorHook(tokenizer)
    return _HOOKS[key]


def generate(
    student: Student,
    items: Sequence[tuple[Any, list[int]]],
    params: SamplingParams,
) -> Iterator[list[tuple[Any, list[str], list[int]]]]:
    """Yield, per batch, ``(key, k completion texts, k completion token counts)`` for each
    ``(key, prompt_ids)`` item."""
    if not items:
        return
    was_training = student.model.training
    student.model.eval()
    model = student.inference_model()
    per_batch = max(1, params.batch_size // params.k)
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    try:
        for b, start in enumerate(range(0, len(order), per_batch)):
            batch = [items[i] for i in order[start : start + per_batch]]
            ids, mask = _left_pad([p for _, p in batch], student.pad_id, student.device)
            gen = torch.Generator(device="cpu").manual_seed(params.seed * 1_000_003 + b)
            hook = calculator_hook(student.tokenizer) if params.calculator else None
            stop = StopHook(student.tokenizer, params.stop) if params.stop else None
            new = decode(model, ids, mask, params, student.eos_id, gen, hook, stop)
            results = []
            for j, (key, _) in enumerate(batch):
                seqs = new[j * params.k : (j + 1) * params.k]
                results.append((key, [student.decode(s) for s in seqs], [len(s) for s in seqs]))
            yield results
    finally:
        student.model.train(was_training)


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    params: SamplingParams,
    eos_id: int,
    gen: torch.Generator | None = None,
    hook: CalculatorHook | None = None,
    stop: StopHook | None = None,
) -> list[list[int]]:
    """Decode ``params.k`` continuations of each left-padded prompt; return their tokens
    (without EOS), prompt-major: rows ``i*k .. i*k+k-1`` belong to prompt ``i``.

    Hand-written rather than ``model.generate`` because it is about twice as fast here: one
    prefill is shared by the k samples of a prompt (the cache is repeated after it), only the
    last position's logits are computed, and rows that have finished are dropped from the
    batch (and its KV cache) instead of being decoded on as padding.
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=getattr(model, "config", None))
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = _prefill(model, ids, mask, pos, cache)
    last = pos[:, -1:]
    if params.k > 1:
        cache.batch_repeat_interleave(params.k)
        logits = logits.repeat_interleave(params.k, 0)
        mask = mask.repeat_interleave(params.k, 0)
        last = last.repeat_interleave(params.k, 0)
    rows = list(range(logits.shape[0]))  # output row of each batch row
    done = [False] * len(rows)
    outputs: list[list[int]] = [[] for _ in rows]
    forced: dict[int, deque[int]] = {}  # output row -> calculator tokens still to feed
    for step in range(params.max_new_tokens):
        nxt = _pick(logits, params, gen)
        if forced:
            for j, r in enumerate(rows):
                if forced.get(r):
                    nxt[j] = forced[r].popleft()
        for j, t in enumerate(nxt.tolist()):
            if done[j]:
                continue  # finished rows ride along until the next compaction
            if t == eos_id:
                done[j] = True
                continue
            out_row = outputs[rows[j]]
            out_row.append(t)
            if stop is not None and stop.done(out_row):
                done[j] = True
                continue
            if hook is not None and not forced.get(rows[j]):
                fill = hook.forced(out_row)
                if fill:
                    forced[rows[j]] = deque(fill)
        live = [j for j, d in enumerate(done) if not d]
        if not live or step == params.max_new_tokens - 1:
            break
        # Compacting copies the whole cache: do it once a quarter of the rows have finished.
        if len(rows) - len(live) >= max(1, len(rows) // 4):
            keep = torch.tensor(live, device=nxt.device)
            cache.batch_select_indices(keep)
            mask, last, nxt = mask[keep], last[keep], nxt[keep]
            rows = [rows[j] for j in live]
            done = [False] * len(rows)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last = last + 1
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=last,
            past_key_values=cache,
            use_cache=True,
        )
        logits = out.logits[:, -1].float()
    return outputs


def _prefill(model, ids, mask, pos, cache) -> torch.Tensor:
    """Run the prompts through the model and return the last position's logits (fp32).

    Where the output layer is a plain linear map, it is applied here to the contiguous last
    hidden states: transformers' ``logits_to_keep=1`` slices a non-contiguous ``[B, 1, H]``
    view, which torch's CPU matmul multiplies by expanding the ``[H, vocab]`` weight to
    ``[B, H, vocab]`` (a 7 GB copy for SmolLM2 at batch 128; measured: half the time of a
    whole evaluation went there).
    """
    config = getattr(model, "config", None)
    plain_head = (
        hasattr(model, "get_decoder")
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
        and model.get_output_embeddings() is not None
    )
    kwargs = {"attention_mask": mask, "position_ids": pos, "past_key_values": cache}
    if plain_head:
        hidden = model.get_decoder()(input_ids=ids, use_cache=True, **kwargs).last_hidden_state
        return model.get_output_embeddings()(hidden[:, -1].contiguous()).float()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float()


def _pick(
    logits: torch.Tensor, params: SamplingParams, gen: torch.Generator | None
) -> torch.Tensor:
    if params.greedy:
        return logits.argmax(-1)
    logits = logits / params.temperature
    if params.top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > params.top_p  # keep the token crossing top_p
        sorted_logits[drop] = float("-inf")
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)
