import math

import pytest
import torch

from selftrain.config import DPOConfig, OptimizerConfig
from selftrain.sampling import SamplingParams, generate
from selftrain.training.dpo import preference_loss, reference_logps, train_dpo
from selftrain.training.loop import collate, scorer_of, token_logps
from selftrain.training.sft import train_sft, validation_loss


def _opt(**kwargs) -> OptimizerConfig:
    """An optimizer section with no weight decay and no warm-up unless set."""
    return OptimizerConfig(**{"weight_decay": 0.0, "warmup_ratio": 0.0, **kwargs})


def _data(s):
    qa = [("What is 2+3?", "2+3=<<2+3=5>>5\n#### 5"), ("What is 4*2?", "4*2=<<4*2=8>>8\n#### 8")]
    return [(s.prompt_ids(q), s.completion_ids(a)) for q, a in qa], qa


def test_sft_learns_its_answers_and_when_to_stop(make_student):
    """Full fine-tuning on two examples: greedy decoding then reproduces each answer exactly and
    stops at EOS, which holds only if labels, EOS and the chat format are right end to end."""
    s = make_student()
    data, qa = _data(s)
    before = validation_loss(s, data)
    res = train_sft(s, data, _opt(lr=3e-3, batch_size=2), max_steps=80, seed=0)
    assert res.steps == 80
    assert validation_loss(s, data) < before / 10
    items = [(q, s.prompt_ids(q)) for q, _ in qa]
    out = {k: t[0] for b in generate(s, items, SamplingParams(max_new_tokens=30)) for k, t, _ in b}
    assert out == dict(qa)


def test_sft_early_stopping_keeps_the_best_weights(make_student):
    s = make_student()
    data, _ = _data(s)
    scores = iter([0.5, 0.9, 0.4, 0.3, 0.2, 0.1])
    snapshots = []

    def validate():
        snapshots.append(s.snapshot())
        return {"accuracy": next(scores)}

    res = train_sft(
        s, data, _opt(lr=1e-3, batch_size=2), max_steps=12, validate=validate, eval_every=2,
        patience=2,
    )  # fmt: skip
    assert [h["step"] for h in res.history] == [2, 4, 6, 8]  # stopped after 2 checks w/o gain
    assert res.best_step == 4 and res.steps == 8
    for name, t in s.snapshot().items():
        assert torch.equal(t, snapshots[1][name])


def test_preference_losses():
    z = torch.zeros(3)
    assert torch.allclose(preference_loss(z, z, z, z, 0.1), torch.full((3,), math.log(2)))
    assert torch.allclose(preference_loss(z, z, z, z, 0.1, "ipo"), torch.full((3,), 25.0))
    good = preference_loss(torch.tensor([0.0]), torch.tensor([-5.0]), z[:1], z[:1], 0.5)
    bad = preference_loss(torch.tensor([-5.0]), torch.tensor([0.0]), z[:1], z[:1], 0.5)
    assert good < math.log(2) < bad


def test_reference_logps_match_a_direct_computation(make_student):
    s = make_student()
    (p, c), (_, r) = _data(s)[0]
    ref = reference_logps(s, [(p, c, r)])
    ids, mask, labels = collate([(p, c), (p, r)], s.pad_id, "cpu")
    with torch.no_grad():
        direct, _ = token_logps(scorer_of(s), ids, mask, labels)
    assert torch.allclose(ref[0], direct, atol=1e-4)


def test_dpo_prefers_chosen_and_starts_at_log2(make_student):
    s = make_student(lora=True)
    p = s.prompt_ids("What is 2+3?")
    pairs = [
        (p, s.completion_ids("#### 5"), s.completion_ids("#### 6")),
        (p, s.completion_ids("5 it is"), s.completion_ids("6 it is")),
    ]
    ref = reference_logps(s, pairs)
    cfg = DPOConfig(lr=5e-3, batch_size=2, max_steps=30, warmup_ratio=0.0, beta=0.5)
    res = train_dpo(s, pairs, cfg, ref=ref)
    assert abs(res.history[0]["loss"] - math.log(2)) < 1e-3  # policy == reference at step 1
    after = reference_logps(s, pairs)
    margin = (after[:, 0] - ref[:, 0]) - (after[:, 1] - ref[:, 1])
    assert (margin > 0).all()
    assert res.history[-1]["loss"] < 0.3


def test_nll_term_raises_the_chosen_likelihood(make_student):
    s = make_student(lora=True)
    p = s.prompt_ids("q")
    pairs = [(p, s.completion_ids("#### 5"), s.completion_ids("#### 6"))]
    ref = reference_logps(s, pairs)
    cfg = DPOConfig(lr=5e-3, batch_size=1, max_steps=20, beta=0.1, nll_weight=1.0)
    train_dpo(s, pairs, cfg, ref=ref)
    assert reference_logps(s, pairs)[0, 0] > ref[0, 0] + 1.0


def test_token_logps_equal_a_plain_forward(make_student):
    s = make_student(lora=True)
    data, _ = _data(s)
    ids, mask, labels = collate(data, s.pad_id, "cpu")
    with torch.no_grad():
        ours, counts = token_logps(scorer_of(s), ids, mask, labels)
        logp = s.model(input_ids=ids, attention_mask=mask).logits[:, :-1].log_softmax(-1)
    target = labels[:, 1:]
    keep = target != -100
    plain = (logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * keep).sum(-1)
    assert torch.allclose(ours, plain, atol=1e-4)
    assert counts.tolist() == [len(c) for _, c in data]


def test_dpop_penalises_a_falling_chosen_answer():
    ref = torch.zeros(1)
    # the same margin h = 2, once with the chosen answer kept and once pushed down by 1 nat
    kept = preference_loss(torch.tensor([0.0]), torch.tensor([-2.0]), ref, ref, 0.1, "dpop")
    fell = preference_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), ref, ref, 0.1, "dpop")
    plain = preference_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), ref, ref, 0.1)
    assert torch.allclose(kept, plain)  # no penalty while the chosen answer holds its ground
    assert fell > kept + 1.0


def _one_step_grads(s, data, micro):
    """Gradients of one optimizer step of a Trainer on the whole of ``data``."""
    from selftrain.training.trainer import Trainer, _unwrap

    trainer = Trainer(s, _opt(lr=1e-3, grad_clip=1e9, micro_batch_size=micro), total=1)
    grads = {}
    real = trainer.optimizer.step

    def capture(*args, **kwargs):
        grads.update(
            (n, p.grad.clone())
            for n, p in _unwrap(trainer.module).named_parameters()
            if p.requires_grad
        )
        return real(*args, **kwargs)

    trainer.optimizer.step = capture

    def loss_of(module, items):
        logp, _ = token_logps(module, *collate([data[i] for i in items], s.pad_id, "cpu"))
        return -logp.sum(), {"nll": -logp.sum()}

    batch = list(range(len(data)))
    stats = trainer.step(batch, loss_of, norm=sum(len(c) for _, c in data))
    trainer.finish()
    return grads, stats


def _seeded(make_student, lora, **kwargs):
    torch.manual_seed(0)  # the same initial LoRA adapters
    return make_student(lora=lora, **kwargs)


def _six(s):
    qs = ["What is 2+3?", "Tom has 5 apples.", "x", "A much longer question about marbles?"]
    answers = ["#### 5", "5+2=<<5+2=7>>7\n#### 7", "#### 1", "It is 3*4=<<3*4=12>>12\n#### 12"]
    return [
        (s.prompt_ids(qs[i % 4] + " " * i), s.completion_ids(answers[(i + 1) % 4]))
        for i in range(6)
    ]


@pytest.mark.parametrize("lora", [False, True])
def test_accumulated_gradients_equal_the_large_batch_gradients(make_student, lora):
    """6 examples in micro-batches of 4 and 2 give the gradient (and loss) of one pass."""
    whole, whole_stats = _one_step_grads(_seeded(make_student, lora), _six(make_student()), None)
    parts, part_stats = _one_step_grads(_seeded(make_student, lora), _six(make_student()), 4)
    assert whole.keys() == parts.keys() and whole
    for name, g in whole.items():
        assert torch.allclose(g, parts[name], atol=1e-6, rtol=1e-5), name
    assert abs(whole_stats["nll"] - part_stats["nll"]) < 1e-4


@pytest.mark.parametrize("lora", [False, True])
def test_gradient_checkpointing_changes_no_gradient(make_student, lora):
    plain, _ = _one_step_grads(_seeded(make_student, lora), _six(make_student()), 2)
    s = _seeded(make_student, lora, gradient_checkpointing=True)
    base = s.model.get_base_model() if lora else s.model
    assert base.is_gradient_checkpointing
    checkpointed, _ = _one_step_grads(s, _six(s), 2)
    for name, g in plain.items():
        assert torch.allclose(g, checkpointed[name], atol=1e-6, rtol=1e-5), name
