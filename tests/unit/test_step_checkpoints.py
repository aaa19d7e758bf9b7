"""Checkpoints inside a training stage (selftrain/training/checkpoints.py): an SFT and a DPO
killed mid-stage (an exception raised in the step after a checkpoint, as a kill would end
them there) resume from their newest checkpoint and end with the weights, history and steps
of an uninterrupted run; ``keep_last`` is honoured; a torn newest checkpoint is skipped.

One thread, so every float sum is done in one order and the weights compare to 1e-6."""

from __future__ import annotations

import pytest
import torch

from selftrain.config import DPOConfig, LoraConfig, OptimizerConfig, StudentConfig
from selftrain.models import Student
from selftrain.training.dpo import reference_logps, train_dpo
from selftrain.training.sft import train_sft, validation_loss
from selftrain.training.trainer import Trainer


class Killed(Exception):
    """Stands for a kill: the process ends in the middle of a step."""


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def kill_at(monkeypatch):
    """``kill_at(n)``: the n-th optimizer step from now raises :class:`Killed`."""

    def arm(n: int) -> None:
        real, calls = Trainer.step, [0]

        def step(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == n:
                monkeypatch.setattr(Trainer, "step", real)
                raise Killed
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Trainer, "step", step)

    return arm


def _student(tiny_dir, lora: bool) -> Student:
    torch.manual_seed(0)  # the LoRA's initial weights, and the dropout masks
    lora_cfg = LoraConfig(enabled=lora, r=4, dropout=0.2)
    return Student.load(StudentConfig(model=str(tiny_dir), device="cpu", lora=lora_cfg))


def _same_weights(a: Student, b: Student) -> None:
    sa, sb = a.snapshot(), b.snapshot()
    assert sa.keys() == sb.keys()
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], rtol=0, atol=1e-6, msg=name)


def test_sft_killed_mid_stage_resumes_to_the_same_weights(tiny_dir, tmp_path, kill_at):
    """Full fine-tuning with early stopping: the best score, its weights and the count of
    checks without gain live through the kill (checks at 2, 4, 6 before it: 0.5, 0.9, 0.4;
    after it, 0.3 is the second check without gain, so training stops at step 8 with step 4's
    weights, as the uninterrupted run does)."""
    cfg = OptimizerConfig(lr=2e-3, batch_size=2, warmup_ratio=0.25, save_every=3, keep_last=3)
    scores = [0.5, 0.9, 0.4, 0.3, 0.95, 0.2]

    def run(folder, checks_done: int = 0):
        s = _student(tiny_dir, lora=False)
        qa = [(f"What is {i}+{i}?", f"{i}+{i}={2 * i}\n#### {2 * i}") for i in range(5)]
        data = [(s.prompt_ids(q), s.completion_ids(a)) for q, a in qa]
        left = iter(scores[checks_done:])

        def validate():
            return {"accuracy": next(left), "loss": round(validation_loss(s, data), 4)}

        res = train_sft(s, data, cfg, max_steps=12, seed=3, validate=validate, eval_every=2,
                        patience=2, checkpoints=folder)  # fmt: skip
        return s, res

    whole, whole_res = run(None)
    assert (whole_res.steps, whole_res.best_step) == (8, 4)

    kill_at(7)
    with pytest.raises(Killed):
        run(tmp_path / "ckpt")
    assert [p.name for p in sorted((tmp_path / "ckpt").iterdir())] == ["step-000003", "step-000006"]
    resumed, res = run(tmp_path / "ckpt", checks_done=3)
    assert (res.steps, res.best_step, res.history) == (8, 4, whole_res.history)
    _same_weights(resumed, whole)


def test_dpo_killed_mid_stage_resumes_to_the_same_weights(tiny_dir, tmp_path, kill_at, caplog):
    """LoRA with dropout (the random states matter), warm-up then cosine decay (the schedule's
    state matters), AdamW (its moments matter); the last two checkpoints kept; a newest
    checkpoint torn by the kill is skipped for the one before; another training's (another
    beta) is not resumed from, and gives way to the new training's own."""
    cfg = DPOConfig(lr=5e-3, batch_size=2, max_steps=9, warmup_ratio=0.3, beta=0.5,
                    save_every=2, keep_last=2)  # fmt: skip

    def run(folder, cfg=cfg):
        s = _student(tiny_dir, lora=True)
        p, q = s.prompt_ids("What is 2+3?"), s.prompt_ids("What is 1+1?")
        pairs = [
            (p, s.completion_ids("#### 5"), s.completion_ids("#### 6")),
            (p, s.completion_ids("5 it is"), s.completion_ids("6 it is")),
            (q, s.completion_ids("#### 2"), s.completion_ids("#### 3")),
        ]
        ref = reference_logps(s, pairs)
        return s, train_dpo(s, pairs, cfg, seed=1, ref=ref, checkpoints=folder)

    whole, whole_res = run(None)

    folder = tmp_path / "ckpt"
    kill_at(8)
    with pytest.raises(Killed):
        run(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000004", "step-000006"]
    newest = folder / "step-000006" / "model" / "adapter_model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # torn
    resumed, res = run(folder)  # from step 4
    assert res.steps == 9 and res.history == whole_res.history
    _same_weights(resumed, whole)
    assert sorted(p.name for p in folder.iterdir()) == ["step-000006", "step-000008"]

    other = cfg.model_copy(update={"beta": 0.4, "max_steps": 3})
    _, res = run(folder, other)
    assert "of another training" in caplog.text and res.steps == 3
    assert [e["step"] for e in res.history] == [1, 2, 3]
    assert sorted(p.name for p in folder.iterdir()) == ["step-000002"]
