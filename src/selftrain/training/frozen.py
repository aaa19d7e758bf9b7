"""Frozen bottom layers computed once per stage.

LoRA on the top N layers (the default: 15 of SmolLM2's 30) leaves the embeddings and the
bottom layers frozen, so within a stage a training sequence's hidden state after the last
frozen layer never changes: every epoch, every validation loss and DPO's reference pass would
compute it again. :class:`FrozenStates` computes it once per sequence, keeps it (in memory up
to a budget, on a GPU in its memory, beyond the budget in a temporary file), and the scorer
runs only the trainable layers on top of it (:func:`layers_from`). The same numbers: a
sequence's hidden states do not depend on the other rows of its batch or on the padding after
it (right padding, causal attention),
and the top layers get exactly the states, positions and mask the full forward gives them
(tests/unit/test_frozen.py holds losses and gradients to 1e-5 in fp32). The first batch is
also checked against the full forward at run time; a model whose forward does something
else with its input states (e.g. scales them) falls back to the full forward.
Where the student is fully fine-tuned or LoRA covers every layer, there is nothing to cache.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# inputs(items) -> the model inputs of those items' rows, right-padded: input_ids,
# attention_mask (2D, or a 4D boolean mask) and optionally position_ids
Inputs = Callable[[list[int]], dict[str, torch.Tensor]]


def frozen_layer_count(model: nn.Module) -> int:
    """How many bottom decoder layers of ``model`` train nothing (with the embeddings frozen
    too, and no dropout that would make two passes differ); 0 when none can be cached."""
    decoder = model.get_decoder()
    layers = getattr(decoder, "layers", None)
    embed = decoder.get_input_embeddings() if hasattr(decoder, "get_input_embeddings") else None
    if not isinstance(layers, nn.ModuleList) or embed is None:
        return 0
    if any(p.requires_grad for p in embed.parameters()):
        return 0
    config = getattr(model, "config", None)
    if any(getattr(config, k, 0) or 0 for k in ("attention_dropout", "hidden_dropout")):
        return 0
    n = 0
    for layer in layers:
        if any(p.requires_grad for p in layer.parameters()):
            break
        n += 1
    return n if n < len(layers) else 0


@contextlib.contextmanager
def layers_from(decoder: nn.Module, start: int, stop: int | None = None) -> Iterator[None]:
    """Within the block, ``decoder`` runs only its layers ``start:stop`` on ``inputs_embeds``
    (a ``stop`` short of the last layer also skips the final norm, so it returns the residual
    stream after layer ``stop - 1``). The decoder's own forward builds the mask and the
    rotary embeddings, so nothing of a model's forward is written again here."""
    layers, norm = decoder.layers, decoder.norm
    decoder.layers = nn.ModuleList(list(layers)[start:stop])
    if stop is not None and stop < len(layers):
        decoder.norm = nn.Identity()
    try:
        yield
    finally:
        decoder.layers, decoder.norm = layers, norm


class FrozenStates:
    """The hidden states after the first ``layers`` decoder layers of a fixed list of rows
    (a row: one training sequence, or one packed DPO pair), computed once.

    ``lengths[i]`` is how many leading positions of row ``i`` are real (its states are
    kept); :meth:`rows` gives a batch of rows right-padded with zeros, which the attention
    mask keeps every real position from seeing."""

    def __init__(
        self,
        layers: int,
        lengths: Sequence[int],
        width: int,
        budget_mb: float,
        spill: Path | None = None,
        device: torch.device | str = "cpu",
    ):
        self.layers = layers
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        total = int(self.offsets[-1])
        self.file = None
        fits = total * width * 4 <= budget_mb * 2**20
        if fits and torch.device(device).type == "cuda":  # within the budget: on the GPU
            self.store = torch.empty((total, width), dtype=torch.float32, device=device)
        elif not fits:  # beyond the budget: a temporary file
            if spill is not None:
                spill.mkdir(parents=True, exist_ok=True)
            # unlinked at once: nothing is left behind, even by a killed process
            # closed by close(); the file has no name to leave behind
            self.file = tempfile.TemporaryFile(prefix="selftrain-frozen-", dir=spill)  # noqa: SIM115
            self.store = torch.from_numpy(
                np.memmap(self.file, dtype=np.float32, mode="w+", shape=(total, width))
            )
        else:
            self.store = torch.empty((total, width), dtype=torch.float32)

    @classmethod
    def build(
        cls,
        student,
        n: int,
        inputs: Inputs,
        lengths: Sequence[int],
        *,
        budget_mb: float | None = None,
        spill: Path | None = None,
        batch_tokens: int = 8192,
    ) -> FrozenStates | None:
        """The states of rows ``0..n-1`` under the student's frozen layers, or None when the
        cache is off (``student.frozen_cache``), nothing is frozen, or the run-time check
        against the full forward fails. Beyond ``budget_mb`` (default
        ``student.frozen_cache_mb``) they go to a temporary file in ``spill`` (default: the
        system's temporary folder)."""
        cfg = student.cfg
        layers = frozen_layer_count(student.model) if cfg.frozen_cache else 0
        if not layers or not n:
            return None
        budget = cfg.frozen_cache_mb if budget_mb is None else budget_mb
        width = student.model.config.hidden_size
        states = cls(layers, lengths, width, budget, spill, student.device)
        decoder = student.model.get_decoder()
        order = sorted(range(n), key=lambda i: lengths[i])
        was_training = student.model.training
        student.model.eval()
        try:
            with torch.no_grad(), _autocast(student), layers_from(decoder, 0, layers):
                for chunk in _chunks(order, lengths, batch_tokens):
                    x = inputs(chunk)
                    hidden = decoder(
                        input_ids=x["input_ids"],
                        attention_mask=x["attention_mask"],
                        position_ids=x.get("position_ids"),
                    ).last_hidden_state.float()
                    for row, i in enumerate(chunk):
                        a, b = states.offsets[i], states.offsets[i + 1]
                        states.store[a:b] = hidden[row, : b - a].to(states.store.device)
        finally:
            student.model.train(was_training)
        if not states.agrees(student, inputs, order[-2:]):
            log.warning(
                "frozen-layer cache: %s's forward does not take the cached states as they "
                "are; training runs the full forward",
                type(student.model.get_decoder()).__name__,
            )
            return None
        return states

    def rows(self, items: Sequence[int], width: int, device) -> torch.Tensor:
        """``[len(items), width, hidden]``: each item's states, zeros after them."""
        store = self.store
        out = torch.zeros(
            (len(items), width, store.shape[1]), dtype=torch.float32, device=store.device
        )
        for row, i in enumerate(items):
            a, b = self.offsets[i], self.offsets[i + 1]
            out[row, : b - a] = store[a:b]
        return out.to(device, non_blocking=True)

    def agrees(self, student, inputs: Inputs, items: list[int]) -> bool:
        """Whether the top layers on the cached states give the full forward's last hidden
        states for ``items`` (rows of this cache)."""
        decoder = student.model.get_decoder()
        x = inputs(items)
        kwargs = {"attention_mask": x["attention_mask"], "position_ids": x.get("position_ids")}
        was_training = student.model.training
        student.model.eval()
        try:
            with torch.no_grad(), _autocast(student):
                full = decoder(input_ids=x["input_ids"], **kwargs).last_hidden_state.float()
                hidden = self.rows(items, x["input_ids"].shape[1], x["input_ids"].device)
                with layers_from(decoder, self.layers):
                    top = decoder(inputs_embeds=hidden, **kwargs).last_hidden_state.float()
        finally:
            student.model.train(was_training)
        low = student.cfg.autocast_bf16 or next(student.model.parameters()).dtype != torch.float32
        tol = 5e-2 if low else 1e-3  # bf16 rounds at 2^-8; a rescaled input is off by far more
        for row, i in enumerate(items):
            n = int(self.offsets[i + 1] - self.offsets[i])
            if not torch.allclose(top[row, :n], full[row, :n], rtol=tol, atol=tol):
                return False
        return True

    @property
    def on_disk(self) -> bool:
        return self.file is not None

    @property
    def megabytes(self) -> float:
        return self.store.numel() * 4 / 2**20

    def close(self) -> None:
        """Free the states (and the temporary file)."""
        self.store = torch.empty((0, 0))
        if self.file is not None:
            self.file.close()
            self.file = None


def _autocast(student):
    device = next(student.model.parameters()).device.type
    return torch.autocast(device, dtype=torch.bfloat16, enabled=bool(student.cfg.autocast_bf16))


def _chunks(order: list[int], lengths: Sequence[int], batch_tokens: int) -> Iterator[list[int]]:
    """``order`` (sorted by length) in batches of at most ``batch_tokens`` padded tokens."""
    chunk: list[int] = []
    for i in order:
        if chunk and (len(chunk) + 1) * lengths[i] > batch_tokens:
            yield chunk
            chunk = []
        chunk.append(i)
    if chunk:
        yield chunk
