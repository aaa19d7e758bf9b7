"""What an export reads and writes: the checkpoint and the run it comes from, the model with
its LoRA merged into the base, and the output folder (safetensors, tokenizer, generation
config, model card), written beside OUT and renamed into place when complete."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from selftrain.models.checkpoints import checkpoint_folder

DTYPES = ("auto", "float32", "float16", "bfloat16")


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says what to change."""


@dataclass
class Source:
    """A checkpoint to export and what is known about it."""

    weights: Path  # the adapter or full-model folder
    lora: bool  # a PEFT adapter (merged into ``base``) or a full model
    base: str  # the student spec the weights go on: a folder, .gguf, hub id or tiny-llama
    gguf_file: str | None
    run_dir: Path | None  # the run it was trained in (recipe.yaml, metrics.json)
    stage: str | None  # its stage folder in the run: sft, warmup, dpo_st/r1/dpo

    def recipe(self) -> dict:
        """The run's recipe.yaml as written ({} without a run)."""
        import yaml

        if self.run_dir is None:
            return {}
        return yaml.safe_load((self.run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}

    def metrics(self) -> dict:
        """The run's metrics.json ({} without one, or when it cannot be read)."""
        path = self.run_dir / "metrics.json" if self.run_dir else None
        if path is None or not path.is_file():
            return {}
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}


def find_source(checkpoint: Path, base: str | None = None) -> Source:
    """The checkpoint folder (a run's stage folder or its model/ folder), the run around it
    and the base model: ``base`` when given, else the run's recipe's student, else the base
    named in the adapter's config."""
    weights = checkpoint_folder(checkpoint)
    lora = (weights / "adapter_config.json").is_file()
    run_dir, stage = _run_of(weights)
    gguf_file = None
    if base is None and run_dir is not None:
        student = Source(weights, lora, "", None, run_dir, stage).recipe().get("student", {})
        base, gguf_file = student.get("model"), student.get("gguf_file")
    if base is None and lora:
        config = json.loads((weights / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
    if lora and not base:
        raise ExportError(
            f"{weights}: a LoRA adapter outside a run directory, with no base model named in "
            "its adapter_config.json: give the base with --base MODEL"
        )
    return Source(weights, lora, base or str(weights), gguf_file, run_dir, stage)


def _run_of(weights: Path) -> tuple[Path | None, str | None]:
    """The run directory above a checkpoint (the nearest folder with recipe.yaml and
    state.json) and the stage folder's path in it."""
    stage_dir = weights.parent if weights.name == "model" else weights
    for folder in list(stage_dir.resolve().parents)[:4]:
        if (folder / "recipe.yaml").is_file() and (folder / "state.json").is_file():
            return folder, stage_dir.resolve().relative_to(folder).as_posix()
    return None, None


def load_merged(source: Source, device: str = "cpu"):
    """(model, tokenizer): the base with the checkpoint applied, its LoRA merged into the
    weights (peft's merge_and_unload), in float32."""
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student

    cfg = StudentConfig(
        model=source.base if source.lora else str(source.weights),
        gguf_file=source.gguf_file if source.lora else None,
        device=device,
        dtype="float32",
        lora=LoraConfig(enabled=False),
    )
    student = Student.load(cfg)
    if source.lora:
        student.apply_checkpoint(source.weights)
    return student.model.eval(), student.tokenizer


def resolve_dtype(name: str, source: Source) -> torch.dtype:
    """``--dtype``: auto is the dtype the base was saved in (float32 when it does not say)."""
    if name not in DTYPES:
        raise ExportError(f"--dtype takes {', '.join(DTYPES)}, not {name!r}")
    if name == "auto":
        config = Path(source.base if source.lora else source.weights) / "config.json"
        saved = None
        if config.is_file():
            data = json.loads(config.read_text(encoding="utf-8"))
            saved = data.get("dtype") or data.get("torch_dtype")
        name = saved if saved in DTYPES[1:] else "float32"
    return getattr(torch, name)


def check_out(out: Path, overwrite: bool, source: Source) -> None:
    """Refuse an OUT that holds files (unless ``overwrite``) or holds the checkpoint."""
    out_r, weights = out.resolve(), source.weights.resolve()
    if out_r == weights or out_r in weights.parents or weights in out_r.parents:
        raise ExportError(f"{out}: the output folder must be outside the checkpoint {weights}")
    if out.is_file():
        raise ExportError(f"{out}: is a file; give a folder for the exported model")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(
            f"{out}: exists and is not empty; give another folder, or --overwrite to replace it"
        )


def generation_config(model, tokenizer):
    """Greedy decoding (as selftrain evaluates) that stops at the tokenizer's EOS (the chat
    template's end of turn) as well as the model's."""
    from transformers import GenerationConfig

    config = GenerationConfig.from_model_config(model.config)
    eos = [tokenizer.eos_token_id, model.config.eos_token_id]
    eos = list(dict.fromkeys(e for e in eos if isinstance(e, int)))
    config.eos_token_id = eos[0] if len(eos) == 1 else eos
    config.bos_token_id = tokenizer.bos_token_id
    config.pad_token_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    config.do_sample = False
    return config


def write_folder(
    model, tokenizer, tmp: Path, dtype: torch.dtype, max_shard_size: str, card: str
) -> None:
    """Write the model (safetensors, sharded above ``max_shard_size``), tokenizer, generation
    config and model card into the new folder ``tmp`` (:func:`put_in_place` moves it)."""
    shutil.rmtree(tmp, ignore_errors=True)
    model = model.to(dtype)
    model.generation_config = generation_config(model, tokenizer)
    try:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
    except ValueError as e:  # a size transformers cannot read
        raise ExportError(f"--max-shard-size {max_shard_size}: {e}") from None
    tokenizer.save_pretrained(tmp)
    (tmp / "README.md").write_text(card, encoding="utf-8")


def put_in_place(tmp: Path, out: Path) -> None:
    """Replace ``out`` with the complete folder ``tmp``."""
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
