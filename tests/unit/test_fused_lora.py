"""LoRA layers run as one matmul of the merged weight (training/fused_lora.py) give peft's
log-probs and gradients to 1e-5 in fp32, and peft's own forward runs wherever merging would
not be the same function (bf16, dropout, gradient checkpointing)."""

from __future__ import annotations

import pytest
import torch

from selftrain.config import LoraConfig, StudentConfig
from selftrain.models import Student
from selftrain.training import fused_lora
from selftrain.training.loop import TokenScorer, collate, token_logps


def _student(tiny_dir, **lora) -> Student:
    torch.manual_seed(0)
    cfg = StudentConfig(
        model=str(tiny_dir), device="cpu", lora=LoraConfig(enabled=True, r=8, **lora)
    )
    s = Student.load(cfg)
    with torch.no_grad():  # non-zero adapters: B starts at zero
        for p in s.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return s


def _batch(s):
    data = [
        (s.prompt_ids(f"q {i} " * (1 + i % 3)), s.completion_ids(f"a {i} " * 3)) for i in range(5)
    ]
    return collate(data, s.pad_id, "cpu")


def _run(s, fuse: bool, monkeypatch, autocast: bool = False):
    calls = []
    real = fused_lora._MergedLoRA.apply
    monkeypatch.setattr(fused_lora._MergedLoRA, "apply", lambda *a: calls.append(1) or real(*a))
    s.model.zero_grad()
    logp, _ = token_logps(TokenScorer(s.model, autocast, fuse_lora=fuse), *_batch(s))
    logp.sum().backward()
    grads = {n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None}
    monkeypatch.undo()
    return logp.detach(), grads, len(calls)


def test_merged_lora_layers_give_peft_log_probs_and_gradients(tiny_dir, monkeypatch):
    s = _student(tiny_dir)
    plain, plain_grads, none = _run(s, False, monkeypatch)
    fused, fused_grads, used = _run(s, True, monkeypatch)
    assert none == 0 and used == 2 * 7  # every adapted linear map of both layers
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", ["bf16", "dropout", "checkpointing"])
def test_peft_runs_where_merging_is_not_the_same_function(tiny_dir, monkeypatch, case):
    if case == "dropout":
        s = _student(tiny_dir, dropout=0.1)
    elif case == "checkpointing":
        torch.manual_seed(0)
        cfg = StudentConfig(
            model=str(tiny_dir),
            device="cpu",
            lora=LoraConfig(enabled=True, r=8),
            gradient_checkpointing=True,
        )
        s = Student.load(cfg)
    else:
        s = _student(tiny_dir)
    _, _, used = _run(s, True, monkeypatch, autocast=case == "bf16")
    assert used == 0
