"""LoRA linear layers as one matmul while the scorer runs (fp32).

peft computes a LoRA layer as ``x W^T + s (x A^T) B^T``: the base matmul, two skinny ones
(rank 16 against 576-1536 wide maps), a scaling and an add, and in the backward pass four
more skinny matmuls and another add. On a CPU the skinny matmuls run at a tenth of the big
ones' rate: measured on SmolLM2-135M's shapes (1,120 tokens x 576 -> 1536, 2-core AMD EPYC,
fp32), a LoRA layer's forward and backward took 68-71 ms with peft and 56-65 ms as
:class:`_MergedLoRA`, which runs ``x (W + s B A)^T``: one matmul forward, one for the input's
gradient, and the two small ones the adapters' gradients need (``dB = s dY^T (x A^T)``,
``dA = s (dY B)^T x``). The same function of the same weights (fp32 rounding apart).

Only in fp32: under bf16 (autocast, or bf16 weights) a merged weight would round the
adapters' small update away against the base weight, so there peft's own forward runs, as it
does for anything else a layer may hold (dropout, DoRA, several adapters, a quantised base)
and under gradient checkpointing (its recomputation runs outside the scorer's forward).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class _MergedLoRA(torch.autograd.Function):
    """``x (W + s B A)^T + bias`` with gradients for ``x``, ``A`` and ``B`` (``W`` and the
    bias are frozen). The merged weight is recomputed in the backward pass (a rank-r
    product: 1% of the matmul) rather than kept."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scaling: float):
        merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
        flat = x.reshape(-1, x.shape[-1])
        ctx.save_for_backward(flat, weight, lora_a, lora_b, flat @ lora_a.t())
        ctx.scaling, ctx.shape = scaling, x.shape
        return F.linear(x, merged, bias)

    @staticmethod
    def backward(ctx, dy):
        flat, weight, lora_a, lora_b, u = ctx.saved_tensors
        grad = dy.reshape(-1, dy.shape[-1])
        dx = da = db = None
        if ctx.needs_input_grad[0]:
            merged = torch.addmm(weight, lora_b, lora_a, alpha=ctx.scaling)
            dx = (grad @ merged).view(ctx.shape)
        if ctx.needs_input_grad[3]:
            da = (grad @ lora_b).t() @ flat * ctx.scaling
        if ctx.needs_input_grad[4]:
            db = grad.t() @ u * ctx.scaling
        return dx, None, None, da, db, None


def _plain_lora(layer: nn.Module) -> tuple[nn.Module, nn.Module, float] | None:
    """``(A, B, scaling)`` of a peft LoRA linear layer that is one plain adapter over an
    ``nn.Linear`` (no dropout, DoRA, bias or merge), else None."""
    if getattr(layer, "disable_adapters", True) or getattr(layer, "merged", True):
        return None
    active = list(getattr(layer, "active_adapters", []))
    if len(active) != 1 or active[0] not in layer.lora_A or active[0] in layer.lora_variant:
        return None
    name = active[0]
    a, b = layer.lora_A[name], layer.lora_B[name]
    plain = (
        type(layer.get_base_layer()) is nn.Linear
        and isinstance(layer.lora_dropout[name], nn.Identity)
        and a.bias is None
        and b.bias is None
        and not getattr(layer, "lora_bias", {}).get(name, False)
    )
    return (a, b, float(layer.scaling[name])) if plain else None


def _forward(layer: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``layer``'s forward: merged in fp32 outside autocast, peft's own otherwise."""
    base = layer.get_base_layer()
    lora = None if args or kwargs else _plain_lora(layer)
    fp32 = (
        x.dtype == torch.float32
        and base.weight.dtype == torch.float32
        and not torch.is_autocast_enabled(x.device.type)
    )
    if lora is None or not fp32:
        return type(layer).forward(layer, x, *args, **kwargs)
    a, b, scaling = lora
    if a.weight.dtype != torch.float32 or b.weight.dtype != torch.float32:
        return type(layer).forward(layer, x, *args, **kwargs)
    return _MergedLoRA.apply(x, base.weight, base.bias, a.weight, b.weight, scaling)


@contextlib.contextmanager
def merged_lora(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, ``model``'s peft LoRA linear layers run as :class:`_MergedLoRA`
    where they can (each call checks; anything else runs peft's forward)."""
    from peft.tuners.lora import Linear as LoraLinear

    modules = list(model.modules()) if enabled else []
    # gradient checkpointing recomputes the forward in the backward pass, after this block
    # has put peft's forward back: both passes must run the same one
    if any(getattr(m, "gradient_checkpointing", False) is True for m in modules):
        modules = []
    layers = [m for m in modules if isinstance(m, LoraLinear)]
    for layer in layers:
        layer.forward = functools.partial(_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward
