"""Drawing the next token: argmax, or inverse-CDF sampling at a uniform number that depends only
on (seed, question, path, step), so a path's tokens do not depend on which process decodes
it, with which other questions, or after how many resumes."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from selftrain.sampling import SamplingParams

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def stable_key(key: object) -> int:
    """A 64-bit number for an item key (a question id) that is the same in every process and
    every run (Python's ``hash`` of a string is not)."""
    digest = hashlib.blake2b(repr(key).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def path_keys(key: int, k: int) -> list[int]:
    """The keys of the ``k`` paths of an item with :func:`stable_key` ``key``."""
    mixed = _mix(np.uint64(key) + _GOLDEN * np.arange(1, k + 1, dtype=np.uint64))
    return [int(x) for x in mixed]


def uniforms(seed: int, keys: Sequence[int], steps: Sequence[int]) -> torch.Tensor:
    """Float64 uniforms in [0, 1), one per (path key, step): splitmix64 of the pair, mixed with
    the seed (counter-based, so no random state is carried between calls)."""
    with np.errstate(over="ignore"):
        base = _mix(np.asarray(keys, dtype=np.uint64) ^ _mix(np.uint64(seed) + _GOLDEN))
        x = _mix(base + _GOLDEN * np.asarray(steps, dtype=np.uint64))
    return torch.from_numpy((x >> np.uint64(11)).astype(np.float64) * 2.0**-53)


def request_seed(seed: int, key: int) -> int:
    """A 31-bit seed for an engine that seeds each request (vLLM) from the item's key."""
    return int(uniforms(seed, [key], [0])[0] * 2**31)


def _mix(x):
    """splitmix64's finaliser, element-wise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _pick(
    logits: torch.Tensor,
    params: SamplingParams,
    u: torch.Tensor | None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next token of each sequence: argmax, or a draw from softmax(logits / temperature)
    restricted to the top-p nucleus, at sequence ``j``'s uniform number ``u[j]`` (float64;
    unused when greedy). Sequence ``j`` draws from logits row ``rows[j]`` (default: one
    sequence per row), so sequences sharing a row share its softmax and sort.

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
    u = u.to(probs.device)
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
