"""The built-in decoder: k paths per prompt with shared prefixes, continuous batching and a
preallocated KV cache (see :func:`decode_stream`)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from selftrain.sampling.draws import _pick, path_keys, stable_key, uniforms
from selftrain.sampling.hooks import CalculatorHook, StopHook
from selftrain.sampling.kv_cache import (
    _copy_rows,
    _drop_columns,
    _place_rows,
    _preallocated_cache,
    preallocated_layer_class,
)

if TYPE_CHECKING:
    from selftrain.sampling import SamplingParams


@torch.no_grad()
def decode(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    params: SamplingParams,
    eos_id: int,
    keys: Sequence[object] | None = None,
    hook: CalculatorHook | None = None,
    stop: StopHook | None = None,
) -> list[list[int]]:
    """:func:`decode_stream` on left-padded prompts; returns the outputs prompt-major: rows
    ``i*k .. i*k+k-1`` are the k continuations of prompt ``i``."""
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    done = dict(decode_stream(model, prompts, params, eos_id, 0, keys, hook, stop))
    return [seq for i in range(len(prompts)) for seq in done[i]]


@torch.no_grad()
def decode_stream(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int = 0,
    keys: Sequence[object] | None = None,
    hook: CalculatorHook | None = None,
    stop: StopHook | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Iterator[tuple[int, list[list[int]]]]:
    """Decode ``params.k`` continuations of each prompt (token ids, taken in the order
    given); yield ``(i, the k continuations of prompt i)`` (EOS left out) as soon as all k
    have finished.

    Hand-written rather than ``model.generate`` because it is faster (benchmarks/RESULTS.md):

    - **Shared prefixes.** The model runs once per distinct context, not once per sequence:
      the k samples of a prompt share one row of the batch (and of the KV cache) for as long
      as they have drawn the same tokens, and a row is forked (its cache row copied) when
      they part. Exact: sequences with the same context have the same next-token
      distribution, and each still draws its own token from it. The prefill of a prompt is
      the first such shared step; a trained student's k paths agree on much more (measured:
      42% of the tokens of k=8 paths are distinct for the default recipe's SFT student).
    - **Continuous batching.** ``params.batch_size`` is the number of rows the model runs
      on together. Rows freed by finished or still-shared sequences take in the next prompts
      at once (their prefill is written into the cache right-aligned to the current step),
      so the matmuls stay wide (on a CPU, a 64-row matmul runs 1.2-1.7x faster per row than a
      32-row one) and no row idles until the slowest sequence of its batch ends. At most
      ``2 * batch_size`` sequences are in flight, which bounds the cache.
    - Only the last position's logits are computed; the KV cache and the attention masks are
      preallocated and written in place; a draw uses one uniform number per sequence
      (inverse CDF) instead of one exponential per vocabulary entry.
    """
    if params.max_new_tokens < 1:
        yield from ((i, [[] for _ in range(params.k)]) for i in range(len(prompts)))
        return
    keys = range(len(prompts)) if keys is None else keys
    paths = [path_keys(stable_key(key), params.k) for key in keys]  # per prompt, per path
    pending = deque(range(len(prompts)))
    while pending:
        yield from _decode_batch(
            model, prompts, pending, params, eos_id, pad_id, paths, hook, stop, autocast
        )


def _decode_batch(
    model, prompts, pending: deque, params, eos_id, pad_id, paths, hook, stop, autocast
):
    """One continuous batch of :func:`decode_stream`: starts with as many pending prompts as
    fit, takes in more as rows free up, and returns once no sequence is left to decode."""

    def run(*args):
        with autocast():
            return _last_logits(model, *args)

    k, budget = params.k, max(params.batch_size, params.k)
    first = [pending.popleft() for _ in range(min(len(pending), max(1, budget // k)))]
    device = _model_device(model)
    ids, mask = _left_pad([prompts[p] for p in first], pad_id, device)
    cache = _preallocated_cache(model, ids.shape[1] + params.max_new_tokens, rows=budget + k)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = run(ids, mask, pos, cache)
    layer_class = preallocated_layer_class()
    can_admit = all(isinstance(x, layer_class) for x in getattr(cache, "layers", []))
    n_cached = ids.shape[1]
    # per batch row: the attention mask (over cache columns and the steps ahead), position
    masks = _fit(mask.new_ones((0, 0)), budget + k, n_cached + params.max_new_tokens, 1)
    masks[: len(first), :n_cached] = mask
    last = _fit(pos.new_zeros((0, 1)), budget + k, 1, 0)
    last[: len(first)] = pos[:, -1:]
    n_rows = len(first)
    row_of: dict[int, int] = {}  # sequence (prompt * k + j) -> its batch row
    for r, p in enumerate(first):
        for j in range(k):
            row_of[p * k + j] = r
    live = sorted(row_of)
    outputs: dict[int, list[int]] = {s: [] for s in live}
    unfinished = {p: k for p in first}
    forced: dict[int, deque[int]] = {}  # sequence -> calculator tokens still to feed
    steps = 0
    while live:
        # Take in pending prompts while rows are free: prefilled apart, they sit in "virtual"
        # rows n_rows.. until their first tokens are drawn, then get real rows below.
        new: list[int] = []
        in_use = len({row_of[s] for s in live})
        while (
            can_admit
            and pending
            and in_use + k * (len(new) + 1) <= budget
            and len(live) + k * (len(new) + 1) <= 2 * budget
            and len(prompts[pending[0]]) <= n_cached
        ):
            new.append(pending.popleft())
        if new:
            new_ids, new_mask = _left_pad([prompts[p] for p in new], pad_id, device)
            new_cache = _preallocated_cache(model, new_ids.shape[1], rows=len(new))
            new_pos = (new_mask.cumsum(-1) - 1).clamp(min=0)
            logits = torch.cat([logits, run(new_ids, new_mask, new_pos, new_cache)])
            for j, p in enumerate(new):
                unfinished[p] = k
                for i in range(k):
                    row_of[p * k + i] = n_rows + j
                    outputs[p * k + i] = []
            live = sorted(row_of)
        # Draw the next token of every live sequence.
        u = None
        if not params.greedy:
            drawn = [len(outputs[s]) for s in live]  # a path's step counter: tokens so far
            u = uniforms(params.seed, [paths[s // k][s % k] for s in live], drawn)
        picks = _pick(logits, params, u, torch.tensor([row_of[s] for s in live])).tolist()
        groups: dict[tuple[int, int], list[int]] = {}  # (row, token) -> its sequences
        for s, t in zip(live, picks, strict=True):
            if forced.get(s):
                t = forced[s].popleft()
            out = outputs[s]
            if t != eos_id:
                out.append(t)
            ended = t == eos_id or len(out) >= params.max_new_tokens
            ended = ended or (stop is not None and stop.done(out))
            if ended:
                del row_of[s]
                forced.pop(s, None)
                p = s // k
                unfinished[p] -= 1
                if not unfinished[p]:
                    del unfinished[p]
                    yield p, [outputs.pop(p * k + j) for j in range(k)]
                continue
            if hook is not None and not forced.get(s):
                fill = hook.forced(out)
                if fill:
                    forced[s] = deque(fill)
            groups.setdefault((row_of[s], t), []).append(s)
        live = sorted(row_of)
        if not live:
            return
        # Rows: the first group of a batch row keeps it; every other group (forks, and the
        # groups of virtual rows) moves to a free row (one whose sequences have all
        # finished), else to a new one past the end.
        tokens: dict[int, int] = {}
        moves: list[tuple[int, int, list[int]]] = []  # (source row, token, sequences)
        for (r, t), seqs in groups.items():
            if r < n_rows and r not in tokens:
                tokens[r] = t
            else:
                moves.append((r, t, seqs))
        free = [r for r in range(n_rows) if r not in tokens]
        end = n_rows
        forks, placed = ([], []), ([], [])  # (source rows, destination rows)
        for r, t, seqs in moves:
            dst = free.pop(0) if free else end
            end = max(end, dst + 1)
            tokens[dst] = t
            for s in seqs:
                row_of[s] = dst
            if r < n_rows:
                forks[0].append(r)
                forks[1].append(dst)
            else:
                placed[0].append(r - n_rows)
                placed[1].append(dst)
        if end > masks.shape[0]:
            masks = _fit(masks, 2 * end, masks.shape[1], 1)
            last = _fit(last, 2 * end, 1, 0)
        if forks[0]:
            src, dst = torch.tensor(forks[0]), torch.tensor(forks[1])
            _copy_rows(cache, src, dst, end)
            masks[dst], last[dst] = masks[src], last[src]
        if placed[0]:
            src, dst = torch.tensor(placed[0]), torch.tensor(placed[1])
            _place_rows(cache, new_cache, src, dst, end)
            width = new_ids.shape[1]
            masks[dst] = 1
            masks[dst, : n_cached - width] = 0
            masks[dst, n_cached - width : n_cached] = new_mask[src]
            last[dst] = new_pos[src, -1:]
        n_rows = end
        # Compacting copies the whole cache: do it once a quarter of the rows are idle.
        if len(free) >= max(1, n_rows // 4):
            keep = sorted(set(row_of.values()))
            where = {r: j for j, r in enumerate(keep)}
            keep_t = torch.tensor(keep, device=device)
            cache.batch_select_indices(keep_t)
            masks[: len(keep)], last[: len(keep)] = masks[keep_t], last[keep_t]
            tokens = {where[r]: t for r, t in tokens.items() if r in where}
            row_of = {s: where[r] for s, r in row_of.items()}
            n_rows = len(keep)
        # Columns no row attends to any more (prompts of finished rows): dropped once they
        # are a quarter of the cache (looked for every 16 steps).
        steps += 1
        if can_admit and steps % 16 == 0:
            in_use = torch.tensor(sorted(set(row_of.values())), device=device)
            unused = int(masks[in_use, :n_cached].argmax(-1).min())
            if unused >= max(16, n_cached // 4):
                _drop_columns(cache, unused)
                masks[:, : n_cached - unused] = masks[:, unused:n_cached].clone()
                masks[:, n_cached - unused :] = 1
                n_cached -= unused
        if n_cached + 1 > masks.shape[1]:
            masks = _fit(masks, masks.shape[0], 2 * (n_cached + 1), 1)
        row_tokens = [pad_id] * n_rows
        for r, t in tokens.items():
            row_tokens[r] = t
        nxt = torch.tensor(row_tokens, device=device)[:, None]
        n_cached += 1
        last[:n_rows] += 1
        logits = run(nxt, masks[:n_rows, :n_cached], last[:n_rows], cache)


def _fit(t: torch.Tensor, rows: int, cols: int, fill: int) -> torch.Tensor:
    """``t`` enlarged to at least ``rows`` x ``cols``, new entries set to ``fill``."""
    if t.shape[0] >= rows and t.shape[1] >= cols:
        return t
    out = t.new_full((max(rows, t.shape[0]), max(cols, t.shape[1])), fill)
    out[: t.shape[0], : t.shape[1]] = t
    return out


def _model_device(model: torch.nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _last_logits(model, ids, mask, pos, cache) -> torch.Tensor:
    """Run ``ids`` (the prompts, or one new token per row) through the model with the cache
    and return the last position's logits (fp32).

    Where the output layer is a plain linear map, it is applied here to the contiguous last
    hidden states: transformers' ``logits_to_keep=1`` slices a non-contiguous ``[B, 1, H]``
    view, which torch's CPU matmul multiplies by expanding the ``[H, vocab]`` weight to
    ``[B, H, vocab]`` (a 7 GB copy for SmolLM2 at batch 128; measured: half the time of a
    whole evaluation went there). It is computed as ``W @ h^T`` (the same sums), which torch's
    CPU matmul runs ~20% faster than ``h @ W^T`` for a vocabulary-wide ``W``.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_decoder") else None
    config = getattr(model, "config", None)
    kwargs = {"attention_mask": mask, "position_ids": pos, "past_key_values": cache}
    if (
        isinstance(head, torch.nn.Linear)
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    ):
        hidden = model.get_decoder()(input_ids=ids, use_cache=True, **kwargs).last_hidden_state
        by_vocab = torch.mm(head.weight, hidden[:, -1].t())  # [vocab, B]
        logits = torch.empty(by_vocab.shape[::-1], dtype=torch.float32, device=by_vocab.device)
        logits.copy_(by_vocab.t())  # transposed and made fp32 in one copy
        if head.bias is not None:
            logits += head.bias
        return logits
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float()


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)
