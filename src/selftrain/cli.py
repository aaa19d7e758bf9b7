"""Command line: `selftrain run [RECIPE]`."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer
import yaml

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Teach small LMs to reason.")


def _overrides(pairs: list[str]) -> dict:
    """['sft.lr=1e-4', ...] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in pairs:
        if "=" not in item:
            raise typer.BadParameter(f"--set takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                parsed = float(parsed)
        node[leaf] = parsed
    return out


@app.command()
def run(
    recipe: Annotated[
        Path | None, typer.Argument(help="recipe YAML; default: the embedded one")
    ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="run directory (default: runs/NAME)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: sft.lr=1e-4")
    ] = None,
) -> None:
    """Run a recipe end to end; rerunning the same command resumes where it stopped.

    Several processes: `accelerate launch --num_processes N -m selftrain run RECIPE`."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from selftrain.runtime import return_freed_memory

    return_freed_memory()
    from selftrain.config import RecipeError, load_recipe
    from selftrain.models import ModelLoadError
    from selftrain.pipeline import dpo_st, srit
    from selftrain.rundir import RunDirError
    from selftrain.runtime import RuntimeSetupError, launched_processes
    from selftrain.teachers import TeacherError

    try:
        r = load_recipe(recipe, _overrides(set_ or []))
    except RecipeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        pipeline = srit if r.method == "srit" else dpo_st  # dpo_st, self_training
        pipeline.run(r, run_dir or Path("runs") / r.name)
    except (ModelLoadError, RunDirError, RuntimeSetupError, TeacherError, ValueError) as e:
        rank = f"rank {os.environ.get('RANK', 0)}: " if launched_processes() > 1 else ""
        typer.echo(f"{rank}error: {e}", err=True)
        raise typer.Exit(1) from None


def _build_tasks(names: list[str], data_dir: Path | None, style: str, n_shots: int) -> list:
    """Tasks by registry name; benchmark tasks get the data dir and prompting style."""
    from selftrain import tasks as registry
    from selftrain.tasks.benchmark import BenchmarkTask

    built = []
    for name in names:
        base = name.partition(":")[0]
        factory = registry._REGISTRY.get(base)
        if factory is None:
            raise typer.BadParameter(
                f"unknown task {base!r}; known tasks: {', '.join(registry.names())}",
                param_hint="--tasks",
            )
        kwargs = {}
        if isinstance(factory, type) and issubclass(factory, BenchmarkTask):
            kwargs = {"data_dir": data_dir, "style": style, "n_shots": n_shots}
        built.append(registry.get(name, **kwargs))
    return built


def _precision(name: str) -> bool | str:
    choices = {"auto": "auto", "bf16": True, "fp32": False}
    if name not in choices:
        raise typer.BadParameter("auto, bf16 or fp32", param_hint="--precision")
    return choices[name]


@app.command("eval")
def eval_(
    tasks: Annotated[str, typer.Option(help="comma-separated task names: gsm8k,svamp,mmlu:stem")],
    model: Annotated[
        str, typer.Option(help="hub id, local folder, .gguf file, or the embedded default")
    ] = "smollm2-135m-instruct",
    gguf_file: Annotated[str | None, typer.Option(help="GGUF file name inside --model")] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(help="a run's checkpoint on top of --model (runs/NAME/sft, .../dpo)"),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="N questions of each task, evenly spread over the split")
    ] = None,
    split: Annotated[str | None, typer.Option(help="split (default: each task's test)")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="benchmark data folder (or $SELFTRAIN_DATA_DIR)")
    ] = None,
    style: Annotated[str, typer.Option(help="prompting: cot, direct or fewshot")] = "cot",
    n_shots: Annotated[int, typer.Option(help="examples in a few-shot prompt")] = 4,
    scoring: Annotated[
        str, typer.Option(help="generate, loglik (options' likelihood) or auto")
    ] = "generate",
    train_task: Annotated[
        str | None, typer.Option(help="group results in-domain vs out-of-domain")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: evals/NAME)")] = None,
    batch_size: Annotated[int, typer.Option(help="rows decoded together")] = 64,
    max_new_tokens: Annotated[int | None, typer.Option(help="default: per task")] = None,
    calculator: Annotated[bool, typer.Option(help="fill in <<expr=>> while decoding")] = False,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where a probe finds it faster), bf16 or fp32")
    ] = "auto",
    device: Annotated[
        str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N")
    ] = "auto",
    system_prompt: Annotated[str | None, typer.Option(help="system message")] = None,
    compare_to: Annotated[
        Path | None,
        typer.Option(
            help="another model's output folder: a paired comparison on the same questions"
        ),
    ] = None,
) -> None:
    """Accuracy of a model on benchmark tasks, with 95% intervals, as JSON and Markdown;
    with --compare-to, the paired difference to another model (McNemar, 95% interval)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from selftrain.runtime import return_freed_memory

    return_freed_memory()
    from rich.console import Console
    from rich.markdown import Markdown

    from selftrain.eval.suite import run_eval
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import ModelLoadError, Student
    from selftrain.runtime import Runtime, RuntimeSetupError
    from selftrain.tasks.data import DataError

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        built = _build_tasks(names, data_dir, style, n_shots)
        cfg = StudentConfig(
            model=model,
            gguf_file=gguf_file,
            device=device,
            autocast_bf16=_precision(precision),
            system_prompt=system_prompt,
            lora=LoraConfig(enabled=False),
        )
        # under accelerate launch every process scores a share of the questions
        student = Student.load(cfg, Runtime.start(device))
        if adapter is not None:
            student.apply_checkpoint(adapter)
        label = Path(model).name + (f"+{adapter.parent.name}-{adapter.name}" if adapter else "")
        folder = out or Path("evals") / label
        summary = run_eval(
            student,
            built,
            folder,
            limit=limit,
            split=split,
            scoring=scoring,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            calculator=calculator,
            train_task=train_task,
            model_name=label,
            compare_to=compare_to,
        )
    except (DataError, ModelLoadError, RuntimeSetupError, ValueError, KeyError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    from selftrain.eval.suite import markdown_table

    if student.runtime.is_main:
        Console().print(Markdown(markdown_table(summary)))
        typer.echo(f"results: {folder / 'results.json'}, {folder / 'results.md'}")


@app.command("compare")
def compare_(
    a: Annotated[
        Path, typer.Argument(help="model A's answers: an eval --out folder or runs/NAME/eval/MODEL")
    ],
    b: Annotated[Path, typer.Argument(help="model B's answers, to the same questions")],
    out: Annotated[Path | None, typer.Option(help="also write the comparison as JSON")] = None,
) -> None:
    """Paired comparison of two models' answers to the same questions: A's accuracy minus
    B's, its 95% interval and the exact McNemar p-value, per task or split."""
    from rich.console import Console
    from rich.markdown import Markdown

    from selftrain.eval.suite import compare_folders, compare_table
    from selftrain.io import write_json_atomic

    for folder in (a, b):
        if not folder.is_dir():
            typer.echo(f"error: {folder}: no such folder", err=True)
            raise typer.Exit(1)
    try:
        result = compare_folders(a, b)
    except ValueError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"A: {a}\nB: {b}")
    Console().print(Markdown(compare_table(result)))
    if out is not None:
        write_json_atomic(out, {"a": str(a), "b": str(b), "tasks": result})


@app.command("tasks")
def tasks_(
    data_dir: Annotated[
        Path | None, typer.Option(help="benchmark data folder (or $SELFTRAIN_DATA_DIR)")
    ] = None,
) -> None:
    """List the registered tasks with their splits and sizes."""
    from rich.console import Console
    from rich.table import Table

    from selftrain import tasks as registry
    from selftrain.tasks.data import DataError

    table = Table("task", "kind", "splits (size)")
    for name in registry.names():
        task = _build_tasks([name], data_dir, "cot", 4)[0]
        try:
            sizes = (
                task.sizes()
                if callable(getattr(task, "sizes", None))
                else {s: len(task.load(s)) for s in task.splits()}
            )
            text = ", ".join(f"{s} ({n:,})" for s, n in sizes.items())
        except DataError as e:
            text = f"[red]{e}[/red]"
        table.add_row(name, getattr(task, "kind", "number"), text)
    Console().print(table)


@app.command()
def demos(
    task: Annotated[str, typer.Option(help="task name: arithmetic, gsm8k, mmlu:stem, ...")],
    teacher: Annotated[str, typer.Option(help="api, hf, gold or solver")] = "api",
    model: Annotated[
        str | None, typer.Option(help="api: the served model's name; hf: a student spec")
    ] = None,
    base_url: Annotated[
        str, typer.Option(help="api: everything before /chat/completions")
    ] = "https://api.openai.com/v1",
    api_key_env: Annotated[
        str, typer.Option(help="api: the environment variable holding the key (optional)")
    ] = "OPENAI_API_KEY",
    split: Annotated[str, typer.Option(help="the task's split")] = "train",
    limit: Annotated[int | None, typer.Option(help="the first L questions of the split")] = None,
    n_per_question: Annotated[int, typer.Option(help="demonstrations per question")] = 1,
    temperature: Annotated[float, typer.Option(help="0: greedy")] = 0.0,
    max_tokens: Annotated[int, typer.Option(help="tokens per demonstration, at most")] = 512,
    concurrency: Annotated[int, typer.Option(help="api: requests in flight")] = 8,
    timeout_s: Annotated[float, typer.Option(help="api: seconds per request")] = 120.0,
    max_retries: Annotated[int, typer.Option(help="api: retries per request")] = 6,
    seed: Annotated[int | None, typer.Option(help="api: sample i is sent with seed+i")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="a system message")] = None,
    family: Annotated[
        str | None, typer.Option(help="a label for reports: in-family, out-family")
    ] = None,
    price_input: Annotated[
        float | None, typer.Option(help="US$ per million prompt tokens (for the cost)")
    ] = None,
    price_output: Annotated[
        float | None, typer.Option(help="US$ per million completion tokens")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="demos JSONL (default: demos/TASK.SPLIT.jsonl)")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="benchmark data folder (or $SELFTRAIN_DATA_DIR)")
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="answer cache (default: $SELFTRAIN_CACHE_DIR, ~/.cache/selftrain)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Teacher demonstrations for a task's questions, each verified against the ground truth.

    Rerunning the same command (same --out) resumes: answered questions are skipped, cached
    answers cost nothing, and requests that failed are asked again."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pydantic import ValidationError
    from rich.console import Console

    from selftrain.config import TeacherConfig
    from selftrain.io import read_jsonl
    from selftrain.progress import setup_logging
    from selftrain.tasks.data import DataError
    from selftrain.teachers import TeacherError, build_teacher, prices_of, run_demos, summarize

    setup_logging()
    try:
        cfg = TeacherConfig(
            kind=teacher,
            model=model,
            base_url=base_url,
            api_key_env=api_key_env or None,
            n_per_question=n_per_question,
            temperature=temperature,
            max_tokens=max_tokens,
            concurrency=concurrency,
            timeout_s=timeout_s,
            max_retries=max_retries,
            seed=seed,
            system_prompt=system_prompt,
            family=family,
            price_per_million_input=price_input,
            price_per_million_output=price_output,
            cache_dir=str(cache_dir) if cache_dir else None,
        )
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'teacher'}: {x['msg']}" for x in e.errors()
        )
        typer.echo(f"error: {msgs}", err=True)
        raise typer.Exit(2) from None
    out = out or Path("demos") / f"{task.replace(':', '_')}.{split}.jsonl"
    errors: tuple[type[Exception], ...] = (DataError, TeacherError, ValueError, KeyError)
    if cfg.kind == "hf":  # torch is imported only for a local model
        from selftrain.models import ModelLoadError

        errors = (*errors, ModelLoadError)
    try:
        built = _build_tasks([task], data_dir, "cot", 4)[0]
        examples = built.load(split, limit)
        source = build_teacher(cfg, built)
        stats = run_demos(
            source,
            built,
            examples,
            out,
            n_per_question=cfg.n_per_question,
            system_prompt=cfg.system_prompt,
            cache_dir=cfg.cache_dir,
            prices=prices_of(cfg),
            progress=progress,
        )
    except errors as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    console = Console()
    if not console.is_terminal:  # a log or a pipe: no need to squeeze the table into 80 columns
        console = Console(width=max(console.width, 132))
    console.print(_demos_table(summarize(read_jsonl(out)), out))
    run = stats["run"]
    error_counts = ", ".join(f"{k} {v}" for k, v in sorted(run["errors"].items())) or "none"
    paid = f", paid now ${run['cost_paid']:.4f}" if run["cost_paid"] is not None else ""
    typer.echo(
        f"this run ({source.identity}): {run['to_do']} to do, {run['from_cache']} from the cache, "
        f"{run['asked']} asked, {run['requests']} HTTP requests, {run['retries']} retries "
        f"(errors: {error_counts}), {run['seconds']:.1f}s{paid}"
    )
    if stats["failed"]:
        typer.echo(
            f"error: {stats['failed']} requests failed after their retries (recorded in {out}); "
            "run the same command again to ask for them",
            err=True,
        )
        raise typer.Exit(1)


def _demos_table(stats: list[dict], out: Path):
    from rich.table import Table

    table = Table(
        "teacher",
        "family",
        "questions",
        "demos",
        "kept",
        "kept %",
        "q. with kept",
        "tokens in",
        "tokens out",
        "cost $",
        "failed",
        title=str(out),
    )
    for s in stats:
        table.add_row(
            s["teacher"],
            s["family"] or "-",
            str(s["questions"]),
            str(s["demos"]),
            str(s["kept"]),
            f"{100 * s['kept_fraction']:.1f}",
            str(s["questions_with_kept"]),
            f"{s['prompt_tokens']:,}",
            f"{s['completion_tokens']:,}",
            "-" if s["cost"] is None else f"{s['cost']:.4f}",
            str(s["failed"]),
        )
    return table


@app.command()
def version() -> None:
    """Print selftrain's version."""
    from selftrain import __version__

    typer.echo(__version__)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
