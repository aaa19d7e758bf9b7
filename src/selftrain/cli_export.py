"""Command line: `selftrain export`, a run's checkpoint as a model for transformers, the hub,
llama.cpp and Ollama (selftrain/export/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from selftrain.cli import _start, app
from selftrain.cli_errors import reporting


@app.command("export")
def export_(
    checkpoint: Annotated[
        Path, typer.Argument(help="a run's checkpoint: runs/NAME/sft, runs/NAME/dpo, ...")
    ],
    out: Annotated[Path, typer.Argument(help="the folder to write the model to")],
    base: Annotated[
        str | None,
        typer.Option(help="the base model (default: the run's recipe's student.model)"),
    ] = None,
    dtype: Annotated[
        str, typer.Option(help="auto (the base's), float32, float16 or bfloat16")
    ] = "auto",
    max_shard_size: Annotated[
        str, typer.Option(help="safetensors files above this size are split: 2GB, 500MB")
    ] = "2GB",
    gguf: Annotated[
        str | None, typer.Option(help="also a GGUF file for llama.cpp and Ollama: f32, f16, bf16")
    ] = None,
    push_to_hub: Annotated[
        str | None, typer.Option(help="then upload it to this hub repository: USER/NAME")
    ] = None,
    private: Annotated[bool, typer.Option(help="a private hub repository")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty OUT")] = False,
    device: Annotated[str, typer.Option(help="where to merge: cpu, cuda, cuda:N")] = "cpu",
) -> None:
    """Merge a checkpoint's LoRA into its base and write a model folder: safetensors, the
    tokenizer, the generation config and a model card with the run's recipe and accuracy."""
    _start()
    with reporting():
        from selftrain.export import export
        from selftrain.export.hub import check_repo, push

        if push_to_hub:
            check_repo(push_to_hub)  # before the export, which may take minutes
        done = export(
            checkpoint,
            out,
            base=base,
            dtype=dtype,
            max_shard_size=max_shard_size,
            gguf=gguf,
            overwrite=overwrite,
            device=device,
            name=push_to_hub,
        )
        typer.echo(f"exported {done.source.weights} to {out} in {done.seconds:.1f} s:")
        typer.echo("  " + ", ".join(done.files))
        if push_to_hub:
            typer.echo(f"pushed to {push(out, push_to_hub, private)}")
