"""Command line: `selftrain run`, `eval`, `compare`, `tasks`, `demos` and `version` here; the
per-stage commands (`sft`, `sample`, `pairs`, `rft`, `dpo`), `export`, `export-data` and `report`
in cli_*.py modules of their own, registered at the end of this file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
import yaml

from selftrain.cli_errors import DEBUG, OneLineErrors, fail, reporting
from selftrain.errors import yaml_problem

if TYPE_CHECKING:
    from selftrain.config import TeacherConfig


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="Teach small LMs to reason.",
)

# options whose type and help are spelled once
DataDir = Annotated[
    Path | None, typer.Option(help="benchmark data folder (or $SELFTRAIN_DATA_DIR)")
]
Device = Annotated[str, typer.Option(help="auto (CUDA when present), cpu, cuda, cuda:N")]


def _start(free_memory: bool = True) -> None:
    """A command's process: OpenMP threads that sleep while waiting (and freed memory handed
    back to the system: :func:`selftrain.runtime.return_freed_memory`)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if free_memory:
        from selftrain.runtime import return_freed_memory

        return_freed_memory()


def _print_markdown(text: str) -> None:
    """Render Markdown (a results or comparison table) on the terminal."""
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(text))


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="show an error's traceback (or SELFTRAIN_DEBUG=1)")
    ] = False,
) -> None:
    """Teach small LMs to reason."""
    DEBUG["on"] = debug or os.environ.get("SELFTRAIN_DEBUG", "") not in ("", "0")


def _overrides(pairs: list[str], flag: str = "--set") -> dict:
    """['sft.lr=1e-4', ...] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in pairs:
        if "=" not in item:
            raise typer.BadParameter(f"{flag} takes KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        names = key.strip().split(".")
        if not all(n.isidentifier() for n in names):
            raise typer.BadParameter(f"{flag} takes KEY=VALUE with a dotted key, got '{item}'")
        node = out
        *parents, leaf = names
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"{flag} {key}: '{p}' is set to a value, not a section")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise typer.BadParameter(
                f"{flag} {key}: not a YAML value ({value!r}): {yaml_problem(e)}"
            ) from None
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
    _start()
    overrides = _overrides(set_ or [])
    with reporting():
        from selftrain.config import load_recipe
        from selftrain.pipeline import dpo_st, srit

        r = load_recipe(recipe, overrides)
        pipeline = srit if r.method == "srit" else dpo_st  # dpo_st, self_training
        pipeline.run(r, run_dir or Path("runs") / r.name)


def _build_tasks(
    names: list[str], data_dir: Path | None, style: str, n_shots: int, args: dict | None = None
) -> list:
    """Tasks by registry name (blank names skipped); benchmark tasks get the data dir and
    prompting style; ``args`` (--task-arg) go to every task, as a recipe's task.args."""
    from selftrain import tasks as registry
    from selftrain.tasks.benchmark import BenchmarkTask

    built = []
    for name in (n.strip() for n in names if n.strip()):
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
        try:
            built.append(registry.get(name, **kwargs, **(args or {})))
        except TypeError:  # a task that takes no such argument
            raise typer.BadParameter(f"task {name} takes no {sorted(args or {})}") from None
        except ValueError as e:  # an argument the task refuses
            raise typer.BadParameter(str(e)) from None
    return built


def _precision(name: str) -> bool | str:
    choices = {"auto": "auto", "bf16": True, "fp32": False}
    if name not in choices:
        raise typer.BadParameter("auto, bf16 or fp32", param_hint="--precision")
    return choices[name]


# the options of `selftrain eval` that go to run_eval as they are
_RUN_EVAL_OPTIONS = (
    "limit",
    "split",
    "scoring",
    "batch_size",
    "max_new_tokens",
    "calculator",
    "train_task",
    "compare_to",
)


@app.command("eval")
def eval_(
    ctx: typer.Context,
    tasks: Annotated[
        str, typer.Option("--tasks", "--task", help="comma-separated names: gsm8k,svamp,custom")
    ],
    model: Annotated[
        str, typer.Option(help="hub id, local folder, .gguf file, or the embedded default")
    ] = "smollm2-135m-instruct",
    gguf_file: Annotated[str | None, typer.Option(help="GGUF file name inside --model")] = None,
    adapter: Annotated[
        Path | None,
        typer.Option(help="a run's checkpoint on top of --model (runs/NAME/sft, .../dpo)"),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(min=1, help="N questions of each task, evenly spread over the split"),
    ] = None,
    split: Annotated[str | None, typer.Option(help="split (default: each task's test)")] = None,
    data_dir: DataDir = None,
    style: Annotated[str, typer.Option(help="prompting: cot, direct or fewshot")] = "cot",
    n_shots: Annotated[int, typer.Option(help="examples in a few-shot prompt")] = 4,
    scoring: Annotated[
        str, typer.Option(help="generate, loglik (options' likelihood) or auto")
    ] = "generate",
    train_task: Annotated[
        str | None, typer.Option(help="group results in-domain vs out-of-domain")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: evals/NAME)")] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=16384, help="rows decoded together")] = 64,
    max_new_tokens: Annotated[int | None, typer.Option(help="default: per task")] = None,
    calculator: Annotated[bool, typer.Option(help="fill in <<expr=>> while decoding")] = False,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 where a probe finds it faster), bf16 or fp32")
    ] = "auto",
    device: Device = "auto",
    system_prompt: Annotated[str | None, typer.Option(help="system message")] = None,
    compare_to: Annotated[
        Path | None,
        typer.Option(
            help="another model's output folder: a paired comparison on the same questions"
        ),
    ] = None,
    task_arg: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE as in task.args: path=my.jsonl")
    ] = None,
) -> None:
    """Accuracy of a model on benchmark tasks, with 95% intervals, as JSON and Markdown;
    with --compare-to, the paired difference to another model (McNemar, 95% interval)."""
    _start()
    task_args = _overrides(task_arg or [], "--task-arg")
    built = _build_tasks(tasks.split(","), data_dir, style, n_shots, task_args)
    autocast = _precision(precision)
    with reporting():
        from selftrain.eval.suite import check_out_dir, load_student, markdown_table, run_eval

        if out is not None:  # before the model loads
            check_out_dir(out)
        student, label = load_student(model, gguf_file, adapter, device, autocast, system_prompt)
        folder = out or Path("evals") / label
        settings = {k: ctx.params[k] for k in _RUN_EVAL_OPTIONS}
        summary = run_eval(student, built, folder, model_name=label, **settings)
    if student.runtime.is_main:
        _print_markdown(markdown_table(summary))
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
    from selftrain.eval.suite import compare_folders, compare_table
    from selftrain.io import write_json_atomic

    for folder in (a, b):
        if not folder.is_dir():
            fail(f"{folder}: no such folder (an eval --out folder or runs/NAME/eval/MODEL)")
    with reporting():
        result = compare_folders(a, b)
        typer.echo(f"A: {a}\nB: {b}")
        _print_markdown(compare_table(result))
        if out is not None:
            write_json_atomic(out, {"a": str(a), "b": str(b), "tasks": result})


@app.command("tasks")
def tasks_(data_dir: DataDir = None) -> None:
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
    ctx: typer.Context,
    task: Annotated[str, typer.Option(help="task name: arithmetic, gsm8k, mmlu:stem, ...")],
    kind: Annotated[str, typer.Option("--teacher", help="api, hf, gold or solver")] = "api",
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
    limit: Annotated[
        int | None, typer.Option(min=1, help="the first L questions of the split")
    ] = None,
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
    price_per_million_input: Annotated[
        float | None,
        typer.Option("--price-input", help="US$ per million prompt tokens (for the cost)"),
    ] = None,
    price_per_million_output: Annotated[
        float | None, typer.Option("--price-output", help="US$ per million completion tokens")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="demos JSONL (default: demos/TASK.SPLIT.jsonl)")
    ] = None,
    data_dir: DataDir = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="answer cache (default: $SELFTRAIN_CACHE_DIR, ~/.cache/selftrain)"),
    ] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Teacher demonstrations for a task's questions, each verified against the ground truth.

    Rerunning the same command (same --out) resumes: answered questions are skipped, cached
    answers cost nothing, and requests that failed are asked again."""
    _start(free_memory=False)
    from rich.console import Console

    from selftrain.io import read_jsonl
    from selftrain.progress import setup_logging
    from selftrain.teachers import run_line, summarize, summary_table, teacher_demos

    setup_logging()
    cfg = _teacher_config(ctx.params)
    out = out or Path("demos") / f"{task.replace(':', '_')}.{split}.jsonl"
    built = _build_tasks([task], data_dir, "cot", 4)[0]
    with reporting():
        source, stats = teacher_demos(cfg, built, built.load(split, limit), out, progress=progress)
    console = Console()
    if not console.is_terminal:  # a log or a pipe: no need to squeeze the table into 80 columns
        console = Console(width=max(console.width, 132))
    console.print(summary_table(summarize(read_jsonl(out)), out))
    typer.echo(run_line(source.identity, stats["run"]))
    if stats["failed"]:
        fail(
            f"{stats['failed']} requests failed after their retries (recorded in {out}); "
            "run the same command again to ask for them"
        )


def _teacher_config(options: dict) -> TeacherConfig:
    """The teacher section made of the ``demos`` options named after its fields; invalid
    values exit with status 2, naming each field."""
    from pydantic import ValidationError

    from selftrain.config import TeacherConfig

    fields = {k: v for k, v in options.items() if k in TeacherConfig.model_fields}
    fields["api_key_env"] = fields["api_key_env"] or None
    fields["cache_dir"] = str(fields["cache_dir"]) if fields["cache_dir"] else None
    try:
        return TeacherConfig(**fields)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(map(str, x['loc'])) or 'teacher'}: {x['msg']}" for x in e.errors()
        )
        fail(msgs)


@app.command()
def version() -> None:
    """Print selftrain's version."""
    from selftrain import __version__

    typer.echo(__version__)


# registers sft, sample, pairs, rft, dpo (cli_stages), export (cli_export), export-data,
# report (cli_report)
from selftrain import cli_export, cli_export_data, cli_report, cli_stages  # noqa: E402, F401


def main() -> None:
    app()


if __name__ == "__main__":
    main()
