"""A run's checkpoint folders: finding one (``--adapter runs/x/sft``), its weight files, and
saving a LoRA adapter's config so the same weights are the same bytes."""

from __future__ import annotations

import json
from pathlib import Path

from selftrain.models.loading import ModelLoadError


def checkpoint_folder(directory: str | Path) -> Path:
    """The folder of a run's checkpoint: ``directory`` (a PEFT adapter or full model folder) or
    its ``model/`` (a stage folder: runs/x/sft -> runs/x/sft/model). A ModelLoadError names
    the path when it holds none, so ``selftrain eval --adapter`` fails before loading a model."""
    directory = Path(directory)
    hint = "give a run's stage folder (runs/NAME/sft, runs/NAME/dpo) or the model/ folder in it"
    if not directory.exists():
        raise ModelLoadError(f"{directory}: no such checkpoint folder; {hint}")
    if not directory.is_dir():
        raise ModelLoadError(f"{directory}: is a file, not a checkpoint folder; {hint}")
    if (directory / "model").is_dir() and not (directory / "adapter_config.json").exists():
        directory = directory / "model"
    if checkpoint_files(directory):
        return directory
    raise ModelLoadError(
        f"{directory}: no checkpoint in it (no adapter_config.json with adapter_model.safetensors, "
        "or model.safetensors); has its stage finished? expected a folder written by "
        "selftrain run, e.g. runs/NAME/sft/model"
    )


def checkpoint_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint folder: a PEFT adapter's, or a full model's."""
    if (directory / "adapter_config.json").is_file():
        names = ("adapter_model.safetensors", "adapter_model.bin")
        return [directory / n for n in names if (directory / n).is_file()]
    return weight_files(directory, must=False)


def weight_files(directory: Path, must: bool = True) -> list[Path]:
    """The safetensors files of a full-model checkpoint: one file, or the shards its index
    names."""
    import json

    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / n for n in names]
    if must:
        raise ModelLoadError(
            f"{directory}: no model.safetensors or model.safetensors.index.json (a checkpoint "
            "written by selftrain run holds one)"
        )
    return []


def sort_target_modules(config: Path) -> None:
    """PEFT writes a LoRA's target modules in the order of a Python set, which changes from
    process to process (string hashing is salted); sorted, the same weights save to the same
    bytes (a verified stage's hash, the crash test)."""
    if not config.is_file():
        return
    data = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(data.get("target_modules"), list):
        data["target_modules"] = sorted(data["target_modules"])
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
