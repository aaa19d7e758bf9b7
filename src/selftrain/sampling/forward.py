"""Running the model for the built-in decoder: prompts left-padded into a batch, and the
next-token logits of each row's last position."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch


def _model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without any)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


@functools.cache
def _cache_keyword(model_class: type) -> str:
    """The name under which ``model_class.forward`` takes the KV cache: ``cache`` in the
    transformers releases that renamed it (calling them with ``past_key_values`` prints a
    FutureWarning on every forward call: "deprecated and will be removed in version 5.40.0"),
    ``past_key_values`` in the earlier 5.x ones."""
    params = inspect.signature(model_class.forward).parameters  # follows the deprecation wrapper
    return "cache" if "cache" in params else "past_key_values"


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a PEFT wrapper (which passes the cache on as it is)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _last_logits(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache: Any,
) -> torch.Tensor:
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
    kwargs = {"attention_mask": mask, "position_ids": pos}
    if (
        isinstance(head, torch.nn.Linear)
        and getattr(config, "final_logit_softcapping", None) is None
        and getattr(config, "logit_scale", None) is None
    ):
        decoder = model.get_decoder()
        kwargs[_cache_keyword(type(_unwrapped(decoder)))] = cache
        hidden = decoder(input_ids=ids, use_cache=True, **kwargs).last_hidden_state
        by_vocab = torch.mm(head.weight, hidden[:, -1].t())  # [vocab, B]
        logits = torch.empty(by_vocab.shape[::-1], dtype=torch.float32, device=by_vocab.device)
        logits.copy_(by_vocab.t())  # transposed and made fp32 in one copy
        if head.bias is not None:
            logits += head.bias
        return logits
    kwargs[_cache_keyword(type(_unwrapped(model)))] = cache
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **kwargs)
    return out.logits[:, -1].float()


def _left_pad(
    seqs: Sequence[list[int]], pad_id: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """``seqs`` right-aligned in a ``[len(seqs), longest]`` batch of ids, ``pad_id`` before
    them, and the attention mask (1 on the tokens, 0 on the padding)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)
