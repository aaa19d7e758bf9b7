"""``selftrain export``: a run's checkpoint as a model anyone can load: LoRA merged into the
base, safetensors (sharded when large), tokenizer, generation config and a model card; a GGUF
file for llama.cpp and Ollama on request; pushed to the hub on request."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from selftrain.export.write import ExportError, Source

__all__ = ["ExportError", "Exported", "Source", "export"]


@dataclass
class Exported:
    """What an export wrote."""

    out: Path
    source: Source
    files: list[str]
    gguf: Path | None
    seconds: float


def export(
    checkpoint: Path,
    out: Path,
    *,
    base: str | None = None,
    dtype: str = "auto",
    max_shard_size: str = "2GB",
    gguf: str | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    name: str | None = None,
) -> Exported:
    """Export ``checkpoint`` (a run's stage folder, or an adapter or model folder) to ``out``;
    everything is written beside ``out`` and renamed into place once complete. ``name``: the
    model's name in its card (a hub repository id; default: OUT's name)."""
    from selftrain.export.card import model_card
    from selftrain.export.gguf_file import GGUF_TYPES, check_architecture, write_gguf
    from selftrain.export.write import (
        check_out,
        find_source,
        load_merged,
        put_in_place,
        resolve_dtype,
        write_folder,
    )

    start = time.perf_counter()
    if gguf is not None and gguf not in GGUF_TYPES:
        raise ExportError(f"--gguf takes {', '.join(GGUF_TYPES)}, not {gguf!r}")
    source = find_source(checkpoint, base)
    torch_dtype = resolve_dtype(dtype, source)
    check_out(out, overwrite, source)
    gguf_name = f"{out.name}-{gguf}.gguf" if gguf else None
    card = model_card(source, name or out.name, str(torch_dtype).removeprefix("torch."), gguf_name)
    model, tokenizer = load_merged(source, device)
    if gguf_name:
        check_architecture(model.config)
    tmp = out.with_name(out.name + ".tmp")
    try:
        write_folder(model, tokenizer, tmp, torch_dtype, max_shard_size, card)
        if gguf_name:
            write_gguf(model, tmp, tmp / gguf_name, gguf)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    put_in_place(tmp, out)
    return Exported(
        out=out,
        source=source,
        files=sorted(p.name for p in out.iterdir()),
        gguf=out / gguf_name if gguf_name else None,
        seconds=time.perf_counter() - start,
    )
