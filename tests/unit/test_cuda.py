"""The student on a CUDA device: placement, precision, training and decoding there. Skipped
(with the reason) on machines without a GPU; benchmarks/gpu_smoke.sh runs them on one."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture
def cuda_student(tiny_dir):
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student
    from selftrain.runtime import Runtime

    def make(lora: bool = True, **kwargs) -> Student:
        cfg = StudentConfig(model=str(tiny_dir), lora=LoraConfig(enabled=lora, r=8), **kwargs)
        return Student.load(cfg, Runtime.start("cuda"))

    return make


def test_the_student_loads_on_the_gpu_in_bf16_under_lora(cuda_student):
    """dtype auto: a frozen base in bf16 (adapters in fp32, peft's default); full
    fine-tuning keeps fp32 master weights."""
    s = cuda_student(lora=True)
    assert s.device.type == "cuda"
    base = {p.dtype for p in s.model.parameters() if not p.requires_grad}
    assert base == {torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32}
    assert {p.dtype for p in s.trainable_parameters()} == {torch.float32}
    assert all(t.device.type == "cpu" for t in s.snapshot().values())  # never a GPU copy
    full = cuda_student(lora=False)
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}


@pytest.mark.parametrize("lora", [True, False])
def test_sft_and_dpo_train_on_the_gpu(cuda_student, lora):
    from selftrain.config import DPOConfig, OptimizerConfig
    from selftrain.training.dpo import reference_logps, train_dpo
    from selftrain.training.sft import train_sft, validation_loss

    s = cuda_student(lora=lora, gradient_checkpointing=True)
    qa = [("What is 2+3?", "2+3=<<2+3=5>>5\n#### 5"), ("What is 4*2?", "4*2=<<4*2=8>>8\n#### 8")]
    data = [(s.prompt_ids(q), s.completion_ids(a)) for q, a in qa]
    before = validation_loss(s, data)
    opt = OptimizerConfig(lr=3e-3, batch_size=2, micro_batch_size=1, weight_decay=0, warmup_ratio=0)
    train_sft(s, data, opt, max_steps=20)
    assert validation_loss(s, data) < before
    pairs = [(p, c, s.completion_ids("#### 7")) for p, c in data]
    ref = reference_logps(s, pairs)
    res = train_dpo(s, pairs, DPOConfig(lr=1e-3, batch_size=2, max_steps=5), ref=ref)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    assert {p.device.type for p in s.trainable_parameters()} == {"cuda"}


def test_greedy_decoding_on_the_gpu_equals_generate(cuda_student):
    from transformers import GenerationConfig

    from selftrain.sampling import SamplingParams, generate
    from selftrain.sampling.forward import _left_pad

    s = cuda_student(lora=False, dtype="float32")
    items = [(i, s.prompt_ids(q)) for i, q in enumerate(["What is 2+3?", "Tom has 5 apples."])]
    ours = {k: t[0] for b in generate(s, items, SamplingParams(max_new_tokens=12)) for k, t, _ in b}
    ids, mask = _left_pad([p for _, p in items], s.pad_id, s.device)
    cfg = GenerationConfig(
        max_new_tokens=12, do_sample=False, eos_token_id=s.eos_id, pad_token_id=s.pad_id
    )
    with torch.no_grad():
        out = s.model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
    for (key, _), row in zip(items, out[:, ids.shape[1] :].tolist(), strict=True):
        row = row[: row.index(s.eos_id)] if s.eos_id in row else row
        assert ours[key] == s.decode(row)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="no bitsandbytes")
def test_qlora_trains_adapters_on_a_four_bit_base(cuda_student):
    from selftrain.config import OptimizerConfig
    from selftrain.training.sft import train_sft

    s = cuda_student(lora=True, load_in_4bit=True)
    assert s.quantized
    data = [(s.prompt_ids("What is 2+3?"), s.completion_ids("#### 5"))]
    opt = OptimizerConfig(lr=1e-3, batch_size=1, weight_decay=0.0, warmup_ratio=0.0)
    res = train_sft(s, data, opt, max_steps=3)
    assert res.steps == 3
    with s.inference() as run:
        assert run.model is s.model  # a 4-bit base is decoded through its adapters


def test_the_frozen_layer_cache_on_the_gpu(tiny_dir):
    """LoRA on the top layer of two (bf16 base): the bottom layer's states are kept in GPU
    memory and the scorer's log-probs on them equal the full forward's (to bf16 rounding)."""
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student
    from selftrain.runtime import Runtime
    from selftrain.training.loop import (
        collate,
        frozen_rows,
        scorer_of,
        sequence_states,
        token_logps,
    )

    cfg = StudentConfig(model=str(tiny_dir), lora=LoraConfig(enabled=True, r=8, top_layers=1))
    s = Student.load(cfg, Runtime.start("cuda"))
    data = [(s.prompt_ids(f"question {i}"), s.completion_ids(f"answer {i} " * i)) for i in range(6)]
    states = sequence_states(s, data)
    assert states is not None and states.store.device.type == "cuda"
    items = [4, 1, 5]
    ids, mask, labels = collate([data[i] for i in items], s.pad_id, s.device)
    with torch.no_grad():
        full, _ = token_logps(scorer_of(s), ids, mask, labels)
        cached, _ = token_logps(scorer_of(s), ids, mask, labels, frozen_rows(states, items))
    torch.testing.assert_close(cached, full, rtol=2e-2, atol=2e-2)


def test_the_shared_prompt_start_on_the_gpu_decodes_the_same(cuda_student):
    from selftrain.sampling import SamplingParams, generate

    s = cuda_student(lora=False, dtype="float32")
    items = [(i, s.prompt_ids(q)) for i, q in enumerate(["What is 2+3?", "Tom has 5 apples."])]
    out = {}
    for shared in (False, True):
        s.cfg = s.cfg.model_copy(update={"shared_prefix": shared})
        params = SamplingParams(max_new_tokens=12)
        out[shared] = {k: t[0] for b in generate(s, items, params) for k, t, _ in b}
    assert out[True] == out[False]
