"""Batched generation of k completions per prompt with a KV cache.

Prompts are sorted by length so a batch carries little padding; the k samples of a prompt
are decoded together (sharing batch rows while they agree) and a prompt is handed back once
all k have finished, so callers can write results per prompt and a rerun can skip prompts
already done.
"""

from __future__ import annotations

import functools
import os
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
    # rows the model decodes together (k samples share rows while they agree; at most
    # 2 * batch_size sequences are in flight)
    batch_size: int = 64
    seed: int = 0
    calculator: bool = False  # fill in ``<<expr=`` annotations (see selftrain.calculator)
    stop: str | None = None  # regex: a row stops once its text matches it at the end
    # "builtin": the decoding loop below; "vllm": vLLM on a GPU (see vllm_generate);
    # None: $SELFTRAIN_SAMPLER if set, else builtin
    engine: str | None = None


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
    """Yield ``(key, k completion texts, k completion token counts)`` for each
    ``(key, prompt_ids)`` item, in lists of about ``batch_size // k`` items as they finish
    (callers write each list, so a rerun can skip the items already done)."""
    if not items:
        return
    engine = params.engine or os.environ.get("SELFTRAIN_SAMPLER", "builtin")
    if engine == "vllm":
        yield from vllm_generate(student, items, params)
        return
    if engine != "builtin":
        raise ValueError(f"unknown sampling engine '{engine}' (builtin, vllm)")
    was_training = student.model.training
    student.model.eval()
    model = student.inference_model()
    per_batch = max(1, params.batch_size // params.k)
    order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
    gen = torch.Generator(device="cpu").manual_seed(params.seed * 1_000_003)
    hook = calculator_hook(student.tokenizer) if params.calculator else None
    stop = StopHook(student.tokenizer, params.stop) if params.stop else None
    prompts = [items[i][1] for i in order]
    results = []
    try:
        stream = decode_stream(
            model, prompts, params, student.eos_id, student.pad_id, gen, hook, stop
        )
        for j, seqs in stream:
            key = items[order[j]][0]
            results.append((key, [student.decode(s) for s in seqs], [len(s) for s in seqs]))
            if len(results) >= per_batch:
                yield results
                results = []
        if results:
            yield results
    finally:
        student.model.train(was_training)


def vllm_available() -> bool:
    """Whether vLLM is installed and a CUDA device is there for it."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def vllm_generate(
    student: Student,
    items: Sequence[tuple[Any, list[int]]],
    params: SamplingParams,
) -> Iterator[list[tuple[Any, list[str], list[int]]]]:
    """:func:`generate` on vLLM (GPU machines with ``vllm`` installed): the same prompts as
    token ids, k samples each, the same temperature / top-p / budget / EOS; yields one batch
    holding every item.

    The student's current weights (LoRA folded in) are written to a temporary folder that
    vLLM loads, so each call starts an engine: worth it for hundreds of prompts, not for a
    few. The calculator works in rounds: a request stops after any token that can open a
    result (``=``), the hook's forced tokens are appended and the sequence is submitted again
    (vLLM's prefix cache keeps the resubmitted prefix cheap). A stop pattern is applied to
    the finished text (the row is cut where the built-in loop would have stopped it).

    NOT TESTED in this repository's CI or on its CPU machines (no GPU, no vllm): written to
    vLLM's documented ``LLM.generate`` / ``SamplingParams`` / ``TokensPrompt`` API."""
    import tempfile

    if not vllm_available():
        raise RuntimeError("the vllm sampler needs `pip install vllm` and a CUDA GPU")
    from vllm import LLM

    hook = calculator_hook(student.tokenizer) if params.calculator else None
    stop = StopHook(student.tokenizer, params.stop) if params.stop else None
    k = 1 if params.greedy else params.k
    with tempfile.TemporaryDirectory() as folder:
        model = student.inference_model()
        model.save_pretrained(folder)
        student.tokenizer.save_pretrained(folder)
        dtype = "bfloat16" if next(model.parameters()).dtype == torch.bfloat16 else "auto"
        llm = LLM(model=folder, dtype=dtype, seed=params.seed, enable_prefix_caching=True)
        try:
            outputs = _vllm_rounds(llm, items, params, k, hook, student.eos_id)
        finally:
            del llm
            torch.cuda.empty_cache()
    results = []
    for i, (key, _) in enumerate(items):
        seqs = [_cut_at_stop(outputs[(i, j)], stop) for j in range(k)]
        if params.greedy and params.k > 1:
            seqs = seqs * params.k
        results.append((key, [student.decode(s) for s in seqs], [len(s) for s in seqs]))
    yield results


def _vllm_rounds(llm, items, params: SamplingParams, k: int, hook, eos_id: int) -> dict:
    """Token ids of sample j of item i, ``{(i, j): tokens}`` (EOS left out), generated in
    rounds that stop after a calculator trigger (see :func:`vllm_generate`)."""
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    def vparams(n: int, budget: int, seed: int):
        return VParams(
            n=n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            max_tokens=budget,
            seed=None if params.greedy else seed,
            stop_token_ids=sorted({eos_id, *(hook.triggers if hook else ())}),
            skip_special_tokens=False,
        )

    outputs: dict[tuple[int, int], list[int]] = {
        (i, j): [] for i in range(len(items)) for j in range(k)
    }
    # round 0: one request per prompt with n = k; later rounds: one per unfinished sample
    requests: list[tuple[int, int | None]] = [(i, None) for i in range(len(items))]
    for round_ in range(params.max_new_tokens + 1):
        if not requests:
            break
        prompts, sps = [], []
        for i, j in requests:
            so_far = [] if j is None else outputs[(i, j)]
            seed = params.seed * 1_000_003 + round_ * 10_007 + i * 101 + (j or 0)
            prompts.append(TokensPrompt(prompt_token_ids=items[i][1] + so_far))
            sps.append(vparams(k if j is None else 1, params.max_new_tokens - len(so_far), seed))
        nxt = []
        for (i, j), res in zip(requests, llm.generate(prompts, sps, use_tqdm=False), strict=True):
            for c, comp in enumerate(res.outputs):
                key = (i, c if j is None else j)
                tokens = outputs[key]
                new = list(comp.token_ids)
                trigger = hook is not None and comp.stop_reason in hook.triggers
                if trigger and (not new or new[-1] != comp.stop_reason):
                    new.append(comp.stop_reason)  # the stop token, where vLLM leaves it out
                # EOS: in the ids, or named as the stop reason, or a plain "stop" (model's EOS)
                ended = eos_id in new or comp.stop_reason == eos_id
                ended |= comp.finish_reason == "stop" and comp.stop_reason is None
                if eos_id in new:
                    new = new[: new.index(eos_id)]
                tokens.extend(new)
                del tokens[params.max_new_tokens :]
                if ended or not trigger or len(tokens) >= params.max_new_tokens:
                    continue
                tokens.extend(hook.forced(tokens)[: params.max_new_tokens - len(tokens)])
                if len(tokens) < params.max_new_tokens:
                    nxt.append(key)
        requests = nxt
    return outputs


def _cut_at_stop(tokens: list[int], stop: StopHook | None) -> list[int]:
    """``tokens`` up to where the stop pattern first matches at the end (all if never)."""
    if stop is None:
        return tokens
    for n in range(1, len(tokens) + 1):
        if stop.done(tokens[:n]):
            return tokens[:n]
    return tokens


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
    """:func:`decode_stream` on left-padded prompts; returns the outputs prompt-major: rows
    ``i*k .. i*k+k-1`` are the k continuations of prompt ``i``."""
    prompts = [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]
    done = dict(decode_stream(model, prompts, params, eos_id, 0, gen, hook, stop))
    return [seq for i in range(len(prompts)) for seq in done[i]]


@torch.no_grad()
def decode_stream(
    model: torch.nn.Module,
    prompts: Sequence[list[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int = 0,
    gen: torch.Generator | None = None,
    hook: CalculatorHook | None = None,
    stop: StopHook | None = None,
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
    pending = deque(range(len(prompts)))
    while pending:
        yield from _decode_batch(model, prompts, pending, params, eos_id, pad_id, gen, hook, stop)


def _decode_batch(model, prompts, pending: deque, params, eos_id, pad_id, gen, hook, stop):
    """One continuous batch of :func:`decode_stream`: starts with as many pending prompts as
    fit, takes in more as rows free up, and returns once no sequence is left to decode."""
    k, budget = params.k, max(params.batch_size, params.k)
    first = [pending.popleft() for _ in range(min(len(pending), max(1, budget // k)))]
    device = _model_device(model)
    ids, mask = _left_pad([prompts[p] for p in first], pad_id, device)
    cache = _preallocated_cache(model, ids.shape[1] + params.max_new_tokens, rows=budget + k)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = _last_logits(model, ids, mask, pos, cache)
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
            logits = torch.cat([logits, _last_logits(model, new_ids, new_mask, new_pos, new_cache)])
            for j, p in enumerate(new):
                unfinished[p] = k
                for i in range(k):
                    row_of[p * k + i] = n_rows + j
                    outputs[p * k + i] = []
            live = sorted(row_of)
        # Draw the next token of every live sequence.
        picks = _pick(logits, params, gen, torch.tensor([row_of[s] for s in live])).tolist()
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
        logits = _last_logits(model, nxt, masks[:n_rows, :n_cached], last[:n_rows], cache)


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


def _copy_rows(cache, src: torch.Tensor, dst: torch.Tensor, n_rows: int) -> None:
    """Make batch row ``dst[j]`` of every cache layer a copy of row ``src[j]``; the cache then
    holds ``n_rows`` rows (rows past its current end are added)."""
    layer_class = preallocated_layer_class()
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, layer_class):
            layer.copy_rows(src, dst, n_rows)
        elif getattr(layer, "is_initialized", False):  # other layer kinds: select all rows
            index = torch.arange(n_rows)
            current = layer.keys.shape[0]
            index[index >= current] = 0
            index[dst] = src
            layer.batch_select_indices(index.to(layer.keys.device))


def _place_rows(cache, other, src: torch.Tensor, dst: torch.Tensor, n_rows: int) -> None:
    """Make batch row ``dst[j]`` of every layer of ``cache`` row ``src[j]`` of ``other``'s
    (a prefill of new prompts), right-aligned to the cache's last column; ``n_rows`` rows
    are then in use."""
    for layer, new in zip(cache.layers, other.layers, strict=True):
        layer.place_rows(new, src, dst, n_rows)


def _drop_columns(cache, n: int) -> None:
    """Drop the first ``n`` cache columns of every layer."""
    for layer in cache.layers:
        layer.drop_columns(n)


def _preallocated_cache(model: torch.nn.Module, width: int, rows: int = 0):
    """A transformers ``DynamicCache`` whose full-attention layers are
    :func:`preallocated_layer_class` layers sized for ``width`` positions and ``rows`` batch
    rows (other layer kinds, e.g. sliding-window ones, are kept as they are)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    layer = functools.partial(preallocated_layer_class(), width, rows)
    cache = DynamicCache(config=getattr(model, "config", None))
    if cache.layers:
        cache.layers = [layer() if type(x) is DynamicLayer else x for x in cache.layers]
    else:  # no config: layers are made as the model first calls them
        cache.layer_class_to_replicate = layer
    return cache


@functools.cache
def preallocated_layer_class() -> type:
    """The class of a KV cache layer that writes each step's keys and values into buffers
    allocated once for the whole decode and hands attention a view of the filled part.

    transformers' ``DynamicLayer`` concatenates the whole cache at every step of every layer
    instead (measured: a quarter of a sampling run on SmolLM2-135M, 2 CPU cores). The buffers
    have room for ``capacity`` batch rows, of which the first ``rows`` are in use: a row is
    forked (:meth:`copy_rows`) by copying its filled part into a spare row. Made on first use
    so importing this module does not import transformers."""
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        def __init__(self, width: int, capacity: int = 0):
            super().__init__()
            self.width, self.capacity = width, capacity
            self.length = 0
            self.rows = 0

        def update(self, key_states, value_states, *args, **kwargs):
            b, n = key_states.shape[0], key_states.shape[-2]
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                rows, width = max(self.capacity, b), max(self.width, n)
                self._kbuf = _empty_like(key_states, rows, width)
                self._vbuf = _empty_like(value_states, rows, width)
                self.rows = b
            elif b != self.rows:
                raise ValueError(f"{b} rows fed to a cache holding {self.rows}")
            elif self.length + n > self._kbuf.shape[-2]:  # past the planned width: double
                self._resize(self._kbuf.shape[0], 2 * (self.length + n))
            self._kbuf[:b, :, self.length : self.length + n] = key_states
            self._vbuf[:b, :, self.length : self.length + n] = value_states
            self.length += n
            self._set_views()
            return self.keys, self.values

        def _resize(self, rows: int, width: int) -> None:
            """New buffers of ``rows`` x ``width`` holding the filled part of the old ones."""
            for name in ("_kbuf", "_vbuf"):
                old = getattr(self, name)
                new = _empty_like(old, rows, width)
                n = min(rows, self.rows)
                new[:n, :, : self.length] = old[:n, :, : self.length]
                setattr(self, name, new)

        def _set_views(self) -> None:
            self.keys = self._kbuf[: self.rows, :, : self.length]
            self.values = self._vbuf[: self.rows, :, : self.length]

        def copy_rows(self, src: torch.Tensor, dst: torch.Tensor, rows: int) -> None:
            """Row ``dst[j]`` becomes a copy of row ``src[j]``; ``rows`` rows are then in use."""
            if not self.is_initialized:
                return
            if rows > self._kbuf.shape[0]:
                self._resize(max(rows, 2 * self._kbuf.shape[0]), self._kbuf.shape[-2])
            src, dst = src.to(self._kbuf.device), dst.to(self._kbuf.device)
            for buf in (self._kbuf, self._vbuf):
                buf[dst, :, : self.length] = buf[src, :, : self.length]
            self.rows = rows
            self._set_views()

        def place_rows(self, other, src: torch.Tensor, dst: torch.Tensor, rows: int) -> None:
            """Row ``dst[j]`` becomes row ``src[j]`` of ``other`` (a layer of the same kind),
            right-aligned to this layer's last column, zeros before it; ``rows`` rows are
            then in use."""
            n = other.length
            if n > self.length:
                raise ValueError(f"{n} columns do not fit before column {self.length}")
            if rows > self._kbuf.shape[0]:
                self._resize(max(rows, 2 * self._kbuf.shape[0]), self._kbuf.shape[-2])
            src, dst = src.to(self._kbuf.device), dst.to(self._kbuf.device)
            for buf, new in ((self._kbuf, other._kbuf), (self._vbuf, other._vbuf)):
                buf[dst, :, : self.length - n] = 0
                buf[dst, :, self.length - n : self.length] = new[src, :, :n]
            self.rows = rows
            self._set_views()

        def drop_columns(self, n: int) -> None:
            """Drop the first ``n`` filled columns (no row attends to them any more)."""
            if not self.is_initialized or n <= 0:
                return
            for buf in (self._kbuf, self._vbuf):
                kept = buf[: self.rows, :, n : self.length].clone()
                buf[: self.rows, :, : self.length - n] = kept
            self.length -= n
            self._set_views()

        def _select_rows(self, rows: torch.Tensor) -> None:
            """Row ``j`` becomes a copy of row ``rows[j]``; ``len(rows)`` rows are in use."""
            if not self.is_initialized:
                return
            if len(rows) > self._kbuf.shape[0]:
                self._resize(len(rows), self._kbuf.shape[-2])
            rows = rows.to(self._kbuf.device)
            for buf in (self._kbuf, self._vbuf):
                buf[: len(rows), :, : self.length] = buf[rows, :, : self.length]
            self.rows = len(rows)
            self._set_views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self._select_rows(torch.arange(self.rows).repeat_interleave(repeats))

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self._select_rows(indices)

        def reset(self) -> None:
            super().reset()
            self.length = 0
            self.rows = 0

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("a preallocated decode cache is never cropped")

    return PreallocatedLayer


def _empty_like(like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """An uninitialised ``[rows, heads, width, head_dim]`` tensor shaped after ``like``."""
    _, h, _, d = like.shape
    return like.new_empty((rows, h, width, d))


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


def _pick(
    logits: torch.Tensor,
    params: SamplingParams,
    gen: torch.Generator | None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each sequence: argmax, or a draw from softmax(logits / temperature)
    restricted to the top-p nucleus. Sequence ``j`` draws from logits row ``rows[j]``
    (default: one sequence per row), so sequences sharing a row share its softmax and sort.

    A draw inverts the cumulative distribution at one uniform number per sequence
    (:func:`_draw`), where ``torch.multinomial`` draws an exponential variate for every
    vocabulary entry (49k per row for SmolLM2; measured: 10% of a sampling run). The top-p
    nucleus is looked for among the 256 most likely tokens; only rows whose nucleus is larger
    are sorted in full."""
    if rows is None:
        rows = torch.arange(logits.shape[0])
    rows = rows.to(logits.device)
    if params.greedy:
        return logits.argmax(-1)[rows]
    if params.temperature != 1.0:
        logits = logits / params.temperature
    probs = logits.softmax(-1)
    u = torch.rand(len(rows), generator=gen, dtype=torch.float64).to(probs.device)
    if params.top_p >= 1.0:
        return _draw(probs, u, rows)
    k = min(256, probs.shape[-1])
    top, order = probs.topk(k, dim=-1)  # descending
    cum = top.cumsum(-1)
    # the nucleus: the most likely tokens up to and including the one crossing top_p
    nucleus = top * ((cum - top) <= params.top_p)
    picked = order[rows].gather(-1, _draw(nucleus, u, rows)[:, None])[:, 0]
    wide = ((cum[:, -1] <= params.top_p) & (k < probs.shape[-1]))[rows]  # beyond the top k
    if bool(wide.any()):
        seqs = wide.nonzero()[:, 0]
        sorted_p, full = probs[rows[seqs]].sort(-1, descending=True)
        cum = sorted_p.cumsum(-1)
        inside = sorted_p * ((cum - sorted_p) <= params.top_p)
        picked[seqs] = full.gather(-1, _draw(inside, u[seqs])[:, None])[:, 0]
    return picked


def _draw(
    weights: torch.Tensor, u: torch.Tensor, rows: torch.Tensor | None = None, block: int = 256
) -> torch.Tensor:
    """Per sequence ``j``, the index ``i`` where the cumulative sum of the non-negative
    weights of row ``rows[j]`` (default: row ``j``) first exceeds ``u[j]`` times the row's
    total: a draw from the normalised weights for uniform ``u`` in [0, 1). Always an index of
    positive weight.

    Two levels, so only one block of each row is summed cumulatively: block totals, the
    block holding the target, then the target's place within that block (float64 sums)."""
    width = weights.shape[1]
    if rows is None:
        rows = torch.arange(weights.shape[0], device=weights.device)
    pad = -width % block
    if pad:
        weights = torch.nn.functional.pad(weights, (0, pad))
    blocks = weights.view(weights.shape[0], -1, block)
    ends = blocks.sum(-1).double().cumsum(-1)[rows]  # [sequences, n_blocks]
    total = ends[:, -1]
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    b = torch.searchsorted(ends, target[:, None], right=True)[:, 0].clamp(max=ends.shape[1] - 1)
    before = torch.where(b > 0, ends.gather(-1, (b - 1).clamp(min=0)[:, None])[:, 0], 0.0)
    inner = blocks[rows, b]  # [sequences, block]
    cum = inner.double().cumsum(-1) + before[:, None]
    j = torch.searchsorted(cum, target[:, None], right=True)[:, 0]
    # rounding between the two sums can leave the target past the block: its last positive entry
    last = block - 1 - (inner.flip(-1) > 0).int().argmax(-1)
    return b * block + torch.minimum(j, last)


def _left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)
