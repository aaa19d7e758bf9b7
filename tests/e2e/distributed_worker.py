"""What tests/e2e/test_distributed.py runs in every process of ``accelerate launch`` (and, for the
one-process references, in the test process itself).

  python distributed_worker.py train OUT TINY_DIR   # SFT and DPO steps; rank 0 saves OUT
  python distributed_worker.py run RECIPE RUN_DIR [--die-after-batches N]
"""

from __future__ import annotations

import os
import sys

import torch


def tiny_student(tiny_dir: str, runtime, lora: bool):
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student

    # LoRA on the top layer only: the bottom one is frozen, so DPO runs on cached states
    # (training/frozen.py) under DDP and FSDP2 too
    cfg = StudentConfig(model=tiny_dir, lora=LoraConfig(enabled=lora, r=4, top_layers=1))
    torch.manual_seed(0)  # LoRA's initial adapters
    return Student.load(cfg, runtime)


def sft_data(student, n: int = 12):
    from selftrain.tasks.arithmetic import ArithmeticTask

    task = ArithmeticTask(seed=0, n_train=n)
    return [
        (student.prompt_ids(task.prompt(e)), student.completion_ids(e.rationale))
        for e in task.load("train", n)
    ]


def train(runtime, tiny_dir: str, micro: int | None) -> dict:
    """Gradients of one SFT step, then SFT (full fine-tuning) and DPO (LoRA) for a few steps
    with gradient clipping on: losses, gradient norms and the final weights."""
    from selftrain.config import DPOConfig, OptimizerConfig
    from selftrain.training.dpo import train_dpo
    from selftrain.training.loop import collate, token_logps
    from selftrain.training.sft import train_sft
    from selftrain.training.trainer import Trainer, _full, _unwrap

    out: dict = {}
    s = tiny_student(tiny_dir, runtime, lora=False)
    data = sft_data(s)
    opt = OptimizerConfig(lr=1e-2, weight_decay=0.0, warmup_ratio=0.0, grad_clip=0.5)
    trainer = Trainer(s, opt.model_copy(update={"micro_batch_size": micro}), total=1)
    grads: dict[str, torch.Tensor] = {}
    real_step = trainer.optimizer.step

    def capture(*args, **kwargs):
        for name, p in _unwrap(trainer.module).named_parameters():
            grads[name] = _full(p.grad).detach().clone()
        return real_step(*args, **kwargs)

    trainer.optimizer.step = capture

    def loss_of(module, items):
        ids, mask, labels = collate([data[i] for i in items], s.pad_id, s.device)
        logp, _ = token_logps(module, ids, mask, labels)
        return -logp.sum(), {"nll": -logp.sum()}

    batch = list(range(8))
    norm = sum(len(data[i][1]) for i in batch)
    out["step"] = trainer.step(batch, loss_of, norm)
    trainer.finish()
    out["grads"] = grads

    s = tiny_student(tiny_dir, runtime, lora=False)
    opt = OptimizerConfig(
        lr=1e-3, batch_size=8, micro_batch_size=micro, weight_decay=0.0, warmup_ratio=0.0,
        grad_clip=0.5,
    )  # fmt: skip
    res = train_sft(s, data, opt, max_steps=3)
    out["sft_history"] = res.history
    out["sft_weights"] = s.snapshot()

    s = tiny_student(tiny_dir, runtime, lora=True)
    data = sft_data(s)
    pairs = [(p, c, data[(i + 1) % len(data)][1]) for i, (p, c) in enumerate(data)]
    cfg = DPOConfig(
        lr=5e-3, batch_size=6, micro_batch_size=micro, max_steps=3, grad_clip=0.5, nll_weight=1.0
    )
    res = train_dpo(s, pairs, cfg)
    out["dpo_history"] = res.history
    out["dpo_weights"] = s.snapshot()
    out["world"] = runtime.world
    out["fsdp"] = runtime.fsdp
    return out


def die_after(batches: int):
    """Make rank 0 exit abruptly (as under kill -9) once it has written ``batches`` sampling
    batches; the launcher then stops the other ranks."""
    from selftrain.stages import sample

    real = sample.generate

    def generate(student, items, params, engine=None):
        for i, batch in enumerate(real(student, items, params, engine)):
            if i == batches and student.runtime.is_main:
                os._exit(9)
            yield batch

    sample.generate = generate


def main() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)
    mode = sys.argv[1]
    if mode == "train":
        from selftrain.runtime import Runtime

        out_path, tiny_dir = sys.argv[2], sys.argv[3]
        runtime = Runtime.start("cpu")
        out = train(runtime, tiny_dir, micro=2)
        if runtime.is_main:
            torch.save(out, out_path)
        return
    if mode == "run":
        from selftrain.cli import main as cli

        args = sys.argv[2:]
        if "--die-after-batches" in args:
            at = args.index("--die-after-batches")
            die_after(int(args[at + 1]))
            del args[at : at + 2]
        sys.argv = ["selftrain", "run", args[0], "--run-dir", args[1]]
        cli()
        return
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
