"""The built-in decoder: k paths per prompt with shared prefixes, continuous batching and a
preallocated KV cache (see :func:`decode_stream`).

Prompts are decoded in continuous batches (:func:`_decode_batch`). Each step of a batch takes in
pending prompts (:func:`_admit`), draws the next token of every sequence (:func:`_draw_next`),
gives every group of sequences that drew the same token a batch row (:func:`_regroup`) and runs
the model on the rows' tokens (:func:`_step`)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from selftrain.sampling.draws import _pick, path_keys, stable_key, uniforms
from selftrain.sampling.forward import _last_logits, _left_pad, _model_device
from selftrain.sampling.hooks import CalculatorHook, StopHook
from selftrain.sampling.kv_cache import (
    PreallocatedLayer,
    _copy_rows,
    _drop_columns,
    _place_rows,
    _preallocated_cache,
    _seed,
)

if TYPE_CHECKING:
    from selftrain.sampling.engine import SamplingParams

Done = tuple[int, list[list[int]]]  # a prompt and its k continuations
Groups = dict[tuple[int, int], list[int]]  # (batch row, next token) -> its sequences
Moves = tuple[list[int], list[int]]  # (source rows, destination rows)


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
    shared_prefix: bool = False,
) -> Iterator[Done]:
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
    - **One shared prompt start** (``shared_prefix``). The tokens every prompt begins with
      (the chat template and system prompt: 16 of SmolLM2's ~68 prompt tokens here) are run
      once per call; every prefill starts from a copy of their KV cache and runs the rest.
      Exact: those positions see only each other, whatever follows them.
    - Only the last position's logits are computed; the KV cache and the attention masks are
      preallocated and written in place; a draw uses one uniform number per sequence
      (inverse CDF) instead of one exponential per vocabulary entry.
    """
    if params.max_new_tokens < 1:
        yield from ((i, [[] for _ in range(params.k)]) for i in range(len(prompts)))
        return
    keys = range(len(prompts)) if keys is None else keys
    paths = [path_keys(stable_key(key), params.k) for key in keys]
    device = _model_device(model)
    start = _prefix(model, prompts, autocast, device) if shared_prefix else None
    run = _Decode(
        model, prompts, params, eos_id, pad_id, paths, hook, stop, autocast, device, start
    )
    pending = deque(range(len(prompts)))
    while pending:
        yield from _decode_batch(run, pending)


@dataclass(frozen=True)
class _Decode:
    """What stays the same through a decode."""

    model: torch.nn.Module
    prompts: Sequence[list[int]]
    params: SamplingParams
    eos_id: int
    pad_id: int
    paths: list[list[int]]  # per prompt, the keys of its k paths
    hook: CalculatorHook | None
    stop: StopHook | None
    autocast: Callable[[], contextlib.AbstractContextManager]
    device: torch.device
    start: _Start | None = None  # the KV cache of the prompts' shared start

    @property
    def budget(self) -> int:
        """The number of batch rows the model runs on together."""
        return max(self.params.batch_size, self.params.k)

    def logits(
        self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        with self.autocast():
            return _last_logits(self.model, ids, mask, pos, cache)

    def prefill(self, prompts: list[int], extra: int, rows: int) -> _Prefill:
        """Run ``prompts`` (indices) left-padded through the model, in a cache of their own
        with room for ``extra`` more columns and ``rows`` batch rows. With a shared start,
        the cache begins with it and only the rest of each prompt runs (left-padded after
        the start: ``[start, padding, rest]``)."""
        n = self.start.length if self.start else 0
        ids, mask = _left_pad([self.prompts[p][n:] for p in prompts], self.pad_id, self.device)
        if n:
            mask = torch.cat([mask.new_ones((len(prompts), n)), mask], dim=1)
        cache = _preallocated_cache(self.model, mask.shape[1] + extra, rows=rows)
        if n:
            _seed(cache, self.start.cache, len(prompts))
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        return _Prefill(mask, pos, cache, self.logits(ids, mask, pos[:, n:], cache))


@dataclass(frozen=True)
class _Start:
    """The prompts' shared start: its length and its KV cache (one row)."""

    length: int
    cache: Any


def _prefix(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    autocast: Callable[[], contextlib.AbstractContextManager],
    device: torch.device,
) -> _Start | None:
    """The KV cache of the tokens every prompt starts with (leaving each at least one token
    of its own), or None: fewer than two prompts, a start under 2 tokens, or cache layers
    that are not all preallocated (sliding windows)."""
    if len(prompts) < 2:
        return None
    first, n = prompts[0], min(len(p) for p in prompts) - 1
    for p in prompts[1:]:
        n = _common(first, p, n)
    if n < 2:
        return None
    cache = _preallocated_cache(model, n, rows=1)
    if not cache.layers or not all(isinstance(x, PreallocatedLayer) for x in cache.layers):
        return None
    ids = torch.tensor([first[:n]], device=device)
    pos = torch.arange(n, device=device)[None]
    with autocast():
        _last_logits(model, ids, torch.ones_like(ids), pos, cache)
    return _Start(n, cache)


def _common(a: list[int], b: list[int], n: int) -> int:
    """The length of the common start of ``a[:n]`` and ``b[:n]``."""
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass
class _Prefill:
    """Prompts run through the model together: left-padded, in a cache of their own."""

    mask: torch.Tensor  # [prompts, width]
    pos: torch.Tensor  # positions, [prompts, width]
    cache: Any
    logits: torch.Tensor  # next-token logits per prompt


@dataclass
class _Batch:
    """A continuous batch in progress. Sequence ``s`` is path ``s % k`` of prompt ``s // k``."""

    cache: Any
    logits: torch.Tensor  # next-token logits per batch row, then per admitted prompt
    masks: torch.Tensor  # per batch row: the attention mask (cache columns, the steps ahead)
    last: torch.Tensor  # per batch row: the position of its last token, [rows, 1]
    n_rows: int  # batch rows in use
    n_cached: int  # cache columns filled
    can_admit: bool  # whether prompts are taken in as rows free up (preallocated layers only)
    row_of: dict[int, int] = field(default_factory=dict)  # live sequence -> its batch row
    outputs: dict[int, list[int]] = field(default_factory=dict)  # sequence -> its tokens
    unfinished: dict[int, int] = field(default_factory=dict)  # prompt -> its live sequences
    forced: dict[int, deque[int]] = field(default_factory=dict)  # calculator tokens to feed
    admitted: _Prefill | None = None  # prompts taken in this step, in rows n_rows..
    steps: int = 0

    def add(self, prompts: list[int], first_row: int, k: int) -> None:
        """The k sequences of each of ``prompts`` (one row per prompt from ``first_row``)."""
        for j, p in enumerate(prompts):
            self.unfinished[p] = k
            for i in range(k):
                self.row_of[p * k + i] = first_row + j
                self.outputs[p * k + i] = []

    def end(self, s: int, k: int) -> Done | None:
        """End sequence ``s``; its prompt and outputs once all k sequences have ended."""
        del self.row_of[s]
        self.forced.pop(s, None)
        p = s // k
        self.unfinished[p] -= 1
        if self.unfinished[p]:
            return None
        del self.unfinished[p]
        return p, [self.outputs.pop(p * k + j) for j in range(k)]


def _decode_batch(run: _Decode, pending: deque[int]) -> Iterator[Done]:
    """One continuous batch of :func:`decode_stream`: starts with as many pending prompts as
    fit, takes in more as rows free up, and returns once no sequence is left to decode."""
    batch = _start(run, pending)
    while True:
        _admit(run, batch, pending)
        groups, done = _draw_next(run, batch)
        yield from done
        if not batch.row_of:
            return
        _step(run, batch, _regroup(run, batch, groups))


def _start(run: _Decode, pending: deque[int]) -> _Batch:
    """A batch of the first pending prompts (as many as fit), prefilled in a cache with room
    for every row and step."""
    k, budget, max_new = run.params.k, run.budget, run.params.max_new_tokens
    first = [pending.popleft() for _ in range(min(len(pending), max(1, budget // k)))]
    pre = run.prefill(first, max_new, rows=budget + k)
    can_admit = all(isinstance(x, PreallocatedLayer) for x in getattr(pre.cache, "layers", []))
    n_cached = pre.mask.shape[1]
    masks = _fit(pre.mask.new_ones((0, 0)), budget + k, n_cached + max_new, 1)
    masks[: len(first), :n_cached] = pre.mask
    last = _fit(pre.pos.new_zeros((0, 1)), budget + k, 1, 0)
    last[: len(first)] = pre.pos[:, -1:]
    batch = _Batch(pre.cache, pre.logits, masks, last, len(first), n_cached, can_admit)
    batch.add(first, 0, k)
    return batch


def _admit(run: _Decode, batch: _Batch, pending: deque[int]) -> None:
    """Take in pending prompts while rows are free: prefilled apart, they sit in "virtual"
    rows ``n_rows..`` (their logits after the batch's) until their first tokens are drawn,
    then get real rows (:func:`_regroup`)."""
    k, budget = run.params.k, run.budget
    new: list[int] = []
    in_use = len(set(batch.row_of.values()))
    while (
        batch.can_admit
        and pending
        and in_use + k * (len(new) + 1) <= budget
        and len(batch.row_of) + k * (len(new) + 1) <= 2 * budget
        and len(run.prompts[pending[0]]) <= batch.n_cached
    ):
        new.append(pending.popleft())
    batch.admitted = None
    if new:
        batch.admitted = run.prefill(new, 0, rows=len(new))
        batch.logits = torch.cat([batch.logits, batch.admitted.logits])
        batch.add(new, batch.n_rows, k)


def _draw_next(run: _Decode, batch: _Batch) -> tuple[Groups, list[Done]]:
    """Draw the next token of every live sequence (a calculator's forced token replaces it)
    and end the sequences that are done. Returns the live sequences by (row, token), and the
    prompts whose k sequences have all ended."""
    params, k = run.params, run.params.k
    live = sorted(batch.row_of)
    u = None
    if not params.greedy:
        drawn = [len(batch.outputs[s]) for s in live]  # a path's step counter: tokens so far
        u = uniforms(params.seed, [run.paths[s // k][s % k] for s in live], drawn)
    picks = _pick(batch.logits, params, u, torch.tensor([batch.row_of[s] for s in live]))
    groups: Groups = {}
    done: list[Done] = []
    for s, t in zip(live, picks.tolist(), strict=True):
        if batch.forced.get(s):
            t = batch.forced[s].popleft()
        out = batch.outputs[s]
        if t != run.eos_id:
            out.append(t)
        ended = t == run.eos_id or len(out) >= params.max_new_tokens
        if ended or (run.stop is not None and run.stop.done(out)):
            finished = batch.end(s, k)
            if finished is not None:
                done.append(finished)
            continue
        if run.hook is not None and not batch.forced.get(s):
            fill = run.hook.forced(out)
            if fill:
                batch.forced[s] = deque(fill)
        groups.setdefault((batch.row_of[s], t), []).append(s)
    return groups, done


def _regroup(run: _Decode, batch: _Batch, groups: Groups) -> dict[int, int]:
    """Give every group of sequences a batch row and return each row's next token: the first
    group of a batch row keeps it; every other group (forks, and the groups of virtual rows)
    moves to a free row (one whose sequences have all ended), else to a new one past the end.
    Compacting copies the whole cache: it is done once a quarter of the rows are idle."""
    tokens: dict[int, int] = {}
    moves: list[tuple[int, int, list[int]]] = []  # (source row, token, sequences)
    for (r, t), seqs in groups.items():
        if r < batch.n_rows and r not in tokens:
            tokens[r] = t
        else:
            moves.append((r, t, seqs))
    free = [r for r in range(batch.n_rows) if r not in tokens]
    end = batch.n_rows
    forks: Moves = ([], [])
    placed: Moves = ([], [])  # source rows of batch.admitted
    for r, t, seqs in moves:
        dst = free.pop(0) if free else end
        end = max(end, dst + 1)
        tokens[dst] = t
        for s in seqs:
            batch.row_of[s] = dst
        if r < batch.n_rows:
            forks[0].append(r)
            forks[1].append(dst)
        else:
            placed[0].append(r - batch.n_rows)
            placed[1].append(dst)
    _fill_rows(batch, forks, placed, end)
    batch.n_rows = end
    if len(free) >= max(1, batch.n_rows // 4):
        tokens = _compact(run, batch, tokens)
    return tokens


def _fill_rows(batch: _Batch, forks: Moves, placed: Moves, end: int) -> None:
    """Copy forked rows (cache, mask, position) into their new rows and write the admitted
    prompts' prefills into theirs, right-aligned to the cache's last column; ``end`` rows
    are then in use."""
    if end > batch.masks.shape[0]:
        batch.masks = _fit(batch.masks, 2 * end, batch.masks.shape[1], 1)
        batch.last = _fit(batch.last, 2 * end, 1, 0)
    masks, last, n = batch.masks, batch.last, batch.n_cached
    if forks[0]:
        src, dst = torch.tensor(forks[0]), torch.tensor(forks[1])
        _copy_rows(batch.cache, src, dst, end)
        masks[dst], last[dst] = masks[src], last[src]
    if placed[0]:
        new = batch.admitted
        src, dst = torch.tensor(placed[0]), torch.tensor(placed[1])
        _place_rows(batch.cache, new.cache, src, dst, end)
        width = new.mask.shape[1]
        masks[dst] = 1
        masks[dst, : n - width] = 0
        masks[dst, n - width : n] = new.mask[src]
        last[dst] = new.pos[src, -1:]


def _compact(run: _Decode, batch: _Batch, tokens: dict[int, int]) -> dict[int, int]:
    """Keep only the rows in use, in order, at the top; returns ``tokens`` by the new rows."""
    keep = sorted(set(batch.row_of.values()))
    where = {r: j for j, r in enumerate(keep)}
    keep_t = torch.tensor(keep, device=run.device)
    batch.cache.batch_select_indices(keep_t)
    batch.masks[: len(keep)], batch.last[: len(keep)] = batch.masks[keep_t], batch.last[keep_t]
    batch.row_of = {s: where[r] for s, r in batch.row_of.items()}
    batch.n_rows = len(keep)
    return {where[r]: t for r, t in tokens.items() if r in where}


def _drop_unused_columns(run: _Decode, batch: _Batch) -> None:
    """Drop the cache columns no row attends to any more (prompts of ended rows) once they are
    a quarter of the cache (looked for every 16 steps)."""
    batch.steps += 1
    if not batch.can_admit or batch.steps % 16:
        return
    in_use = torch.tensor(sorted(set(batch.row_of.values())), device=run.device)
    n = batch.n_cached
    unused = int(batch.masks[in_use, :n].argmax(-1).min())
    if unused >= max(16, n // 4):
        _drop_columns(batch.cache, unused)
        batch.masks[:, : n - unused] = batch.masks[:, unused:n].clone()
        batch.masks[:, n - unused :] = 1
        batch.n_cached -= unused


def _step(run: _Decode, batch: _Batch, tokens: dict[int, int]) -> None:
    """Run the model on each row's next token (padding for rows without one)."""
    _drop_unused_columns(run, batch)
    if batch.n_cached + 1 > batch.masks.shape[1]:
        batch.masks = _fit(batch.masks, batch.masks.shape[0], 2 * (batch.n_cached + 1), 1)
    row_tokens = [run.pad_id] * batch.n_rows
    for r, t in tokens.items():
        row_tokens[r] = t
    nxt = torch.tensor(row_tokens, device=run.device)[:, None]
    batch.n_cached += 1
    n = batch.n_rows
    batch.last[:n] += 1
    batch.logits = run.logits(nxt, batch.masks[:n, : batch.n_cached], batch.last[:n], batch.cache)


def _fit(t: torch.Tensor, rows: int, cols: int, fill: int) -> torch.Tensor:
    """``t`` enlarged to at least ``rows`` x ``cols``, new entries set to ``fill``."""
    if t.shape[0] >= rows and t.shape[1] >= cols:
        return t
    out = t.new_full((max(rows, t.shape[0]), max(cols, t.shape[1])), fill)
    out[: t.shape[0], : t.shape[1]] = t
    return out
