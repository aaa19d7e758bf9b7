"""A KV cache for the built-in decoder: preallocated buffers written in place, whose rows can be
forked (the k paths of a prompt part), filled with newly admitted prompts, and trimmed.

Imports transformers: :mod:`selftrain.sampling` imports this module (through the decoder) only
when a decode starts."""

from __future__ import annotations

import functools

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


class PreallocatedLayer(DynamicLayer):
    """A KV cache layer that writes each step's keys and values into buffers allocated once
    for the whole decode and hands attention a view of the filled part.

    transformers' ``DynamicLayer`` concatenates the whole cache at every step of every layer
    instead (measured: a quarter of a sampling run on SmolLM2-135M, 2 CPU cores). The buffers
    have room for ``capacity`` batch rows, of which the first ``rows`` are in use: a row is
    forked (:meth:`copy_rows`) by copying its filled part into a spare row."""

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
        elif self.length + n > self._kbuf.shape[-2]:  # past the planned width: grow
            self._resize(self._kbuf.shape[0], _grown(self._kbuf.shape[-2], self.length + n))
        self._kbuf[:b, :, self.length : self.length + n] = key_states
        self._vbuf[:b, :, self.length : self.length + n] = value_states
        self.length += n
        self._set_views()
        return self.keys, self.values

    def seed(self, prefix: PreallocatedLayer, rows: int) -> None:
        """Start this (empty) layer with ``rows`` rows that each hold ``prefix``'s one row:
        the KV cache of a prompt start every row shares, computed once."""
        keys, values = prefix.keys, prefix.values
        self.lazy_initialization(keys, values)
        capacity, width = max(self.capacity, rows), max(self.width, keys.shape[-2])
        self._kbuf = _empty_like(keys, capacity, width)
        self._vbuf = _empty_like(values, capacity, width)
        n = keys.shape[-2]
        self._kbuf[:rows, :, :n] = keys
        self._vbuf[:rows, :, :n] = values
        self.length, self.rows = n, rows
        self._set_views()

    def _resize(self, rows: int, width: int) -> None:
        """New buffers of ``rows`` x ``width`` holding the filled part of the old ones."""
        for name in ("_kbuf", "_vbuf"):
            old = getattr(self, name)
            new = _empty_like(old, rows, width)
            n = min(rows, self.rows)
            new[:n, :, : self.length] = old[:n, :, : self.length]
            setattr(self, name, new)

    def _reserve(
        self, rows: int, src: torch.Tensor, dst: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Room for ``rows`` rows (growing the buffers by a quarter at least); returns
        ``src`` and ``dst`` on the buffers' device."""
        if rows > self._kbuf.shape[0]:
            self._resize(_grown(self._kbuf.shape[0], rows), self._kbuf.shape[-2])
        return src.to(self._kbuf.device), dst.to(self._kbuf.device)

    def _set_views(self) -> None:
        self.keys = self._kbuf[: self.rows, :, : self.length]
        self.values = self._vbuf[: self.rows, :, : self.length]

    def copy_rows(self, src: torch.Tensor, dst: torch.Tensor, rows: int) -> None:
        """Row ``dst[j]`` becomes a copy of row ``src[j]``; ``rows`` rows are then in use."""
        if not self.is_initialized:
            return
        src, dst = self._reserve(rows, src, dst)
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
        src, dst = self._reserve(rows, src, dst)
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


def _copy_rows(cache, src: torch.Tensor, dst: torch.Tensor, n_rows: int) -> None:
    """Make batch row ``dst[j]`` of every cache layer a copy of row ``src[j]``; the cache then
    holds ``n_rows`` rows (rows past its current end are added)."""
    for layer in getattr(cache, "layers", []):
        if isinstance(layer, PreallocatedLayer):
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


def _seed(cache, prefix, rows: int) -> None:
    """Every layer of ``cache`` starts with ``rows`` copies of ``prefix``'s one row."""
    for layer, start in zip(cache.layers, prefix.layers, strict=True):
        layer.seed(start, rows)


def _drop_columns(cache, n: int) -> None:
    """Drop the first ``n`` cache columns of every layer."""
    for layer in cache.layers:
        layer.drop_columns(n)


def _preallocated_cache(model: torch.nn.Module, width: int, rows: int = 0):
    """A transformers ``DynamicCache`` whose full-attention layers are
    :class:`PreallocatedLayer` layers sized for ``width`` positions and ``rows`` batch
    rows (other layer kinds, e.g. sliding-window ones, are kept as they are)."""
    layer = functools.partial(PreallocatedLayer, width, rows)
    cache = DynamicCache(config=getattr(model, "config", None))
    if cache.layers:
        cache.layers = [layer() if type(x) is DynamicLayer else x for x in cache.layers]
    else:  # no config: layers are made as the model first calls them
        cache.layer_class_to_replicate = layer
    return cache


def _grown(size: int, needed: int) -> int:
    """A buffer dimension grown to hold ``needed``: by a quarter at least, not doubled. A
    resize holds the old and the new buffers at once; with the KV cache the decoder's largest
    allocation (1.2 GB in fp32 for SmolLM2's 129 rows x 196 positions), doubling it peaked at
    three times that."""
    return max(needed, size + size // 4)


def _empty_like(like: torch.Tensor, rows: int, width: int) -> torch.Tensor:
    """An uninitialised ``[rows, heads, width, head_dim]`` tensor shaped after ``like``."""
    _, h, _, d = like.shape
    return like.new_empty((rows, h, width, d))
