"""The frozen-layer cache (training/frozen.py) gives the numbers of the full forward: losses,
gradients, reference log-probs and trained weights to 1e-5 in fp32, in memory and spilled to
disk; where nothing is frozen, or the model's forward treats its input states otherwise, it
is not used."""

from __future__ import annotations

import pytest
import torch

from selftrain.config import DPOConfig, LoraConfig, OptimizerConfig, StudentConfig
from selftrain.models import Student, tiny_model
from selftrain.training import frozen as frozen_module
from selftrain.training.dpo import reference_logps, train_dpo
from selftrain.training.frozen import FrozenStates, frozen_layer_count
from selftrain.training.loop import (
    collate,
    frozen_rows,
    pair_logps,
    pair_states,
    scorer_of,
    sequence_states,
    token_logps,
)
from selftrain.training.sft import train_sft, validation_loss


@pytest.fixture(scope="module")
def tiny4_dir(tmp_path_factory, tokenizer):
    """A tiny random Llama with 4 layers (LoRA on the top 2 leaves 2 frozen)."""
    d = tmp_path_factory.mktemp("tiny-llama-4")
    model = tiny_model("llama", len(tokenizer), layers=4)
    with torch.no_grad():  # livelier than the tiny model's near-zero initialisation
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


def _student(path, *, cache: bool = True, top: int | None = 2, lora: bool = True, **kw):
    torch.manual_seed(0)
    lc = LoraConfig(enabled=lora, r=8, top_layers=top, dropout=0.0)
    cfg = StudentConfig(model=str(path), device="cpu", lora=lc, frozen_cache=cache, **kw)
    s = Student.load(cfg)
    with torch.no_grad():  # non-zero adapters, so the top layers differ from the base
        for p in s.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return s


def _data(s, n: int = 12):
    return [
        (s.prompt_ids(f"question {i} " * (1 + i % 4)), s.completion_ids(f"step {i} " * (1 + i % 3)))
        for i in range(n)
    ]


def _pairs(data):
    return [(p, c, data[(i + 1) % len(data)][1][:-1]) for i, (p, c) in enumerate(data)]


def test_frozen_layers_are_the_bottom_ones_without_trainable_weights(tiny4_dir):
    assert frozen_layer_count(_student(tiny4_dir, top=2).model) == 2
    assert frozen_layer_count(_student(tiny4_dir, top=1).model) == 3
    assert frozen_layer_count(_student(tiny4_dir, top=None).model) == 0  # LoRA everywhere
    assert frozen_layer_count(_student(tiny4_dir, lora=False).model) == 0  # full fine-tuning
    s = _student(tiny4_dir, cache=False)
    assert sequence_states(s, _data(s)) is None


@pytest.mark.parametrize("budget", [1024, 0])  # in memory; spilled to a temporary file
def test_cached_states_give_the_full_forwards_log_probs_and_gradients(tiny4_dir, budget):
    s = _student(tiny4_dir)
    s.cfg = s.cfg.model_copy(update={"frozen_cache_mb": budget})
    data = _data(s)
    states = sequence_states(s, data)
    assert states is not None and states.layers == 2 and states.on_disk == (budget == 0)
    scorer = scorer_of(s)
    items = [7, 2, 11, 0]

    def run(rows):
        s.model.zero_grad()
        logp, _ = token_logps(scorer, *collate([data[i] for i in items], s.pad_id, "cpu"), rows)
        logp.sum().backward()
        return logp.detach(), {
            n: p.grad.clone() for n, p in s.model.named_parameters() if p.grad is not None
        }

    full, full_grads = run(None)
    cached, cached_grads = run(frozen_rows(states, items))
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    assert full_grads.keys() == cached_grads.keys() and len(full_grads) > 0
    for name, g in full_grads.items():
        torch.testing.assert_close(cached_grads[name], g, rtol=0, atol=1e-5)
    assert validation_loss(s, data, frozen=states) == pytest.approx(
        validation_loss(s, data), abs=1e-5
    )
    states.close()


def test_cached_packed_pairs_give_the_full_forwards_log_probs(tiny4_dir):
    s = _student(tiny4_dir)
    pairs = _pairs(_data(s))
    states = pair_states(s, pairs)
    assert states is not None
    items = [3, 9, 4]
    chunk = [pairs[i] for i in items]
    full, _ = pair_logps(scorer_of(s), chunk, s.pad_id, pack=True)
    cached, _ = pair_logps(
        scorer_of(s), chunk, s.pad_id, pack=True, frozen=frozen_rows(states, items)
    )
    torch.testing.assert_close(cached, full, rtol=0, atol=1e-5)
    torch.testing.assert_close(
        reference_logps(s, pairs, frozen=states), reference_logps(s, pairs), rtol=0, atol=1e-5
    )


def _trained(path, cache: bool, kind: str):
    s = _student(path, cache=cache)
    data = _data(s)
    if kind == "sft":
        opt = OptimizerConfig(lr=1e-2, batch_size=4, weight_decay=0.0, warmup_ratio=0.0)
        res = train_sft(s, data, opt, max_steps=6, seed=1)
        losses = [validation_loss(s, data)]
    else:
        cfg = DPOConfig(lr=1e-2, batch_size=4, max_steps=6, nll_weight=1.0)
        res = train_dpo(s, _pairs(data), cfg, seed=1)
        losses = [h["loss"] for h in res.history]
    return s.snapshot(), losses


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_training_with_the_cache_ends_at_the_same_weights(tiny4_dir, kind, monkeypatch):
    built = []
    real = FrozenStates.build.__func__

    def spy(cls, *args, **kwargs):
        built.append(real(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(FrozenStates, "build", classmethod(spy))
    weights, losses = _trained(tiny4_dir, True, kind)
    assert built and built[0] is not None  # the cache was used
    built.clear()
    plain_weights, plain_losses = _trained(tiny4_dir, False, kind)
    assert not built or built[0] is None
    assert losses == pytest.approx(plain_losses, abs=1e-5)
    for name, t in plain_weights.items():
        torch.testing.assert_close(weights[name], t, rtol=0, atol=1e-5)


def test_a_forward_that_rescales_its_input_states_gets_no_cache(tiny4_dir, caplog):
    """Gemma-style models scale the embeddings inside the forward, so cached states fed back
    as ``inputs_embeds`` would be scaled twice: the run-time check sees it and training runs
    the full forward."""
    s = _student(tiny4_dir)
    decoder = s.model.get_decoder()

    def scale(module, args, kwargs):
        ids = kwargs.pop("input_ids", None)
        embeds = kwargs.get("inputs_embeds")
        kwargs["inputs_embeds"] = 2.0 * (module.embed_tokens(ids) if embeds is None else embeds)
        return args, kwargs

    decoder.register_forward_pre_hook(scale, with_kwargs=True)
    with caplog.at_level("WARNING", logger=frozen_module.__name__):
        assert sequence_states(s, _data(s)) is None
    assert "full forward" in caplog.text
