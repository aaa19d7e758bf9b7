"""Every command README.md shows runs here, scaled down to the tiny model, so none can drift.

The shell commands of README.md's fenced code blocks (``selftrain ...``, ``python -m selftrain``,
``accelerate launch``, ``make ...``, ``.venv/bin/python -m pytest``) are read from the file and
must each be a key of ``CASES``, which says how the command is run here: the README's own words,
plus what scales it down (``--model`` the tiny model, ``--limit 2``, ``--set`` overrides that make
a recipe tiny, a fake OpenAI server for ``--teacher api``). A command added to the README without
a case, or a case whose command left the README, fails ``test_every_readme_command_has_a_case``.

Commands run in-process through ``typer.testing.CliRunner`` on ``selftrain.cli.app``, each in a
folder of its own, except those that read what another wrote (``--adapter runs/demo/rft`` after
``make demo``), which share that folder. The benchmark data comes from ``$SELFTRAIN_DATA_DIR``
or the ``shared/data`` beside the checkout (the README's ``../shared/data``); without it the
commands that need it are skipped. ``accelerate launch`` for 8 GPUs: the config files are
loaded and validated by accelerate and the command line parsed, and one is launched on the CPU
as 1 process (2-process DDP and FSDP2 on the CPU: tests/e2e/test_distributed.py)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fakeopenai import FakeOpenAI
from typer.testing import CliRunner

import selftrain
from selftrain.cli import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
PREFIXES = ("selftrain ", "python -m selftrain", "accelerate launch", "make ", ".venv/bin/python")
API_KEY = "sk-readme-test"


# ---- the README's commands ---------------------------------------------------------------------


def readme_commands(text: str) -> list[str]:
    """The commands of the fenced code blocks: continuation lines joined, the trailing
    ``# comment`` dropped, whitespace collapsed."""
    commands = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            line = " ".join(line.split())
            if line.startswith(PREFIXES):
                commands.append(line)
    return commands


def test_readme_commands_are_found():
    """The extraction itself: a continued command is one, a comment is not part of it."""
    text = "x\n```bash\nselftrain a \\\n    --b 1   # c\n# selftrain no\nls\n```\n"
    assert readme_commands(text) == ["selftrain a --b 1"]


# ---- what the cases share --------------------------------------------------------------------

# the default recipe, tiny: (key, value) for --set, besides student.model
TINY = {
    "student.lora.r": 4,
    "student.autocast_bf16": "false",
    "student.device": "cpu",
    "task.args.n_train": 24,
    "task.args.n_validation": 4,
    "task.args.n_test": 4,
    "teacher.n_questions": 8,
    "sft.max_epochs": 1,
    "sft.eval_every": 2,
    "sft.patience": 1,
    "sft.val_questions": 2,
    "sft.max_new_tokens": 8,
    "sft.batch_size": 4,
    "sampling.n_questions": 4,
    "sampling.offset": 8,
    "sampling.max_new_tokens": 8,
    "sampling.batch_size": 8,
    "rft.batch_size": 4,
    "eval.n": 2,
    "eval.base_n": 2,
    "eval.control_n": 2,
    "eval.max_new_tokens": 8,
    "eval.batch_size": 8,
}
# recipes/dpo_st_gsm8k.yaml, tiny: one round of DPO-ST alone, 2 questions per set
TINY_DPO_ST = {
    "student.autocast_bf16": "false",
    "student.device": "cpu",
    "sampling.k": 2,
    "sampling.max_new_tokens": 8,
    "sampling.batch_size": 8,
    "eval.n": 2,
    "eval.max_new_tokens": 8,
    "eval.batch_size": 8,
    "dpo_st.rounds": 1,
    "dpo_st.baselines": "[]",
    "dpo_st.limit": 2,
    "dpo_st.dev_holdout": 2,
    "dpo_st.sft_k": 1,
    "dpo_st.sft.batch_size": 2,
    "dpo_st.sft.epochs": 1,
    "dpo_st.dpo.batch_size": 2,
    "dpo_st.dpo.max_steps": 1,
    "dpo_st.calculator_ablation": "false",
}
# selftrain eval, tiny
TINY_EVAL = ["--max-new-tokens", "8", "--batch-size", "8", "--device", "cpu", "--precision", "fp32"]


def _sets(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--set", f"{k}={v}")]


def _replace(argv: list[str], option: str, value: str) -> list[str]:
    """``argv`` with ``option``'s value replaced (the option added when absent)."""
    if option in argv:
        i = argv.index(option)
        return [*argv[: i + 1], value, *argv[i + 2 :]]
    return [*argv, option, value]


def _in_repo(argv: list[str]) -> list[str]:
    """Paths into the checkout (``src/...``) made absolute: commands run in a scratch folder."""
    return [str(ROOT / a) if a.startswith("src/") else a for a in argv]


@contextlib.contextmanager
def _cwd(folder: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@dataclass
class Env:
    """The scratch space, the tiny model, the data and the fake teacher server."""

    root: Path
    tiny: Path
    data: Path | None
    fake: FakeOpenAI
    done: dict

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def need_data(self) -> None:
        if self.data is None:
            pytest.skip("no benchmark data: set SELFTRAIN_DATA_DIR or put shared/data beside")

    def cli(self, argv: list[str], folder: Path, code: int = 0):
        env = {
            "SELFTRAIN_DATA_DIR": str(self.data or self.root / "no-data"),
            "SELFTRAIN_CACHE_DIR": str(self.root / "teacher-cache"),
            "OPENAI_API_KEY": API_KEY,
            "COLUMNS": "160",  # tables printed whole
        }
        with _cwd(folder):
            result = CliRunner().invoke(app, argv, env=env)
        assert result.exit_code == code, f"selftrain {shlex.join(argv)}:\n{result.output[-3000:]}"
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    def tiny_recipe(self) -> Path:
        """The default recipe, tiny, as a YAML file (the README's my_recipe.yaml, RECIPE)."""
        path = self.root / "tiny.yaml"
        if not path.exists():
            data: dict = {"name": "my-recipe", "student": {"model": str(self.tiny)}}
            for key, value in TINY.items():
                *parents, leaf = key.split(".")
                node = data
                for p in parents:
                    node = node.setdefault(p, {})
                node[leaf] = yaml.safe_load(str(value))
            path.write_text(yaml.safe_dump(data))
        return path


def _answer(lookup: dict[str, str]) -> Callable[[list[dict], dict], str]:
    """The fake teacher: the gold rationale of a generated arithmetic question it knows (so a
    recipe's demos stage keeps some), a wrong answer to anything else."""

    def answer(messages: list[dict], body: dict) -> str:
        text = messages[-1]["content"]
        for question, demo in lookup.items():
            if question in text:
                return demo
        return "I am not sure.\n#### 0"

    return answer


@pytest.fixture(scope="module")
def env(tiny_dir, tmp_path_factory) -> Iterator[Env]:
    from selftrain import tasks
    from selftrain.config import load_recipe

    data = os.environ.get("SELFTRAIN_DATA_DIR") or str(ROOT.parent / "shared" / "data")
    data_dir = Path(data) if Path(data, "gsm8k").is_dir() else None
    recipe = load_recipe(
        None, {"task": {"args": {k[10:]: v for k, v in TINY.items() if k.startswith("task.args.")}}}
    )
    task = tasks.get(recipe.task.name, **recipe.task.args)
    lookup = {e.question: task.demonstration(e) for e in task.load("train")}
    with FakeOpenAI(_answer(lookup)) as fake:
        yield Env(tmp_path_factory.mktemp("readme"), Path(tiny_dir), data_dir, fake, {})


# ---- how each command runs -------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """How a README command runs here: ``run(env, argv, folder)`` gets the command's words
    (without the leading ``selftrain``); ``after`` is a command that must have run first, in
    the same folder."""

    how: str
    run: Callable[[Env, list[str], Path], None]
    after: str | None = None


def _run_tiny(env: Env, argv: list[str], folder: Path) -> None:
    """``selftrain run`` with the default recipe made tiny; the run directory holds what the
    README says it does."""
    env.cli([*argv, "--set", f"student.model={env.tiny}", *_sets(TINY)], folder)
    if "--run-dir" in argv:
        run_dir = folder / argv[argv.index("--run-dir") + 1]
    else:  # runs/NAME
        (run_dir,) = (folder / "runs").iterdir()
    for name in ("recipe.yaml", "state.json", "metrics.json", "log.txt", "samples.jsonl"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for model in ("base", "sft", "sft_more", "rft"):
        assert set(metrics[model]) >= {"in_domain", "out_of_domain"}, model
    assert "compare" in metrics


def _make_demo(env: Env, argv: list[str], folder: Path) -> None:
    """``make demo`` runs ``selftrain run --run-dir runs/demo`` after installing: that command
    runs here, tiny, and prints no warning (transformers' past_key_values FutureWarning and
    peft's missing-config UserWarning were the two a clean demo printed)."""
    assert _make_target(argv[1])[-1] == ".venv/bin/selftrain run --run-dir runs/demo"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run_tiny(env, ["run", "--run-dir", "runs/demo"], folder)
    shown = [w for w in caught if issubclass(w.category, (FutureWarning, UserWarning))]
    assert not shown, [f"{w.category.__name__}: {w.message} ({w.filename})" for w in shown]
    assert (folder / "runs/demo/rft/model/adapter_config.json").is_file()


def _make_target(target: str) -> list[str]:
    """The commands ``make TARGET`` runs (``make -n``: printed, not run)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    done = subprocess.run(
        ["make", "-n", "--no-print-directory", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
        check=True,
    )
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def _make_test(env: Env, argv: list[str], folder: Path) -> None:
    """``make test`` is pytest over the whole suite, of which this file is part."""
    assert _make_target("test")[-1] == ".venv/bin/python -m pytest -q"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'testpaths = ["tests"]' in pyproject


def _make_lint(env: Env, argv: list[str], folder: Path) -> None:
    """``make lint`` is ruff check and ruff format --check over the same folders: run here."""
    lines = _make_target("lint")[-2:]
    paths = "src tests benchmarks experiments"
    assert lines == [f".venv/bin/ruff check {paths}", f".venv/bin/ruff format --check {paths}"]
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.skip("ruff is not installed beside this Python")
    for line in lines:
        words = shlex.split(line)[1:]
        done = subprocess.run([sys.executable, "-m", "ruff", *words], cwd=ROOT, capture_output=True)
        assert done.returncode == 0, done.stdout.decode()[-3000:]


def _pytest_markers(env: Env, argv: list[str], folder: Path) -> None:
    """The fast suite's marker expression names markers that exist (conftest.py marks e2e)."""
    expression = argv[argv.index("-m", 3) + 1]
    pyproject = (ROOT / "pyproject.toml").read_text()
    for marker in re.findall(r"\b(?!not\b|and\b|or\b)\w+", expression):
        assert f'"{marker}:' in pyproject, marker


def _run_recipe_file(env: Env, argv: list[str], folder: Path) -> None:
    """``my_recipe.yaml``: the default recipe, tiny, written as a file."""
    shutil.copy(env.tiny_recipe(), folder / "my_recipe.yaml")
    env.cli(argv, folder)
    assert yaml.safe_load((folder / "runs/x/recipe.yaml").read_text())["name"] == "my-recipe"


def _run_overrides(env: Env, argv: list[str], folder: Path) -> None:
    """The README's --set overrides on the tiny default recipe: they reach the run."""
    _run_tiny(env, argv, folder)
    (run_dir,) = (folder / "runs").iterdir()
    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert recipe["dpo"]["beta"] == 0.2 and recipe["sampling"]["k"] == 8
    samples = [json.loads(x) for x in (run_dir / "samples.jsonl").open()]
    assert len(samples) == TINY["sampling.n_questions"] * 8


def _run_api_teacher(env: Env, argv: list[str], folder: Path) -> None:
    """A recipe's demos stage from an API teacher: the fake server."""
    _run_tiny(env, [*argv, "--set", f"teacher.base_url={env.fake.url}/v1"], folder)
    demos = [json.loads(x) for x in (folder / "runs/gpt/demos.jsonl").open()]
    assert demos and {d["teacher"] for d in demos} == {"api:gpt-4o-mini"}
    assert any(d["kept"] for d in demos)


def _run_dpo_st_gsm8k(env: Env, argv: list[str], folder: Path) -> None:
    """The GSM8K DPO-ST recipe (meant for a GPU) on the tiny model: one round of DPO-ST."""
    env.need_data()
    argv = [*_in_repo(argv), "--set", f"student.model={env.tiny}", *_sets(TINY_DPO_ST)]
    env.cli(argv, folder)
    metrics = json.loads((folder / "runs/dpo-st-gsm8k/metrics.json").read_text())
    assert metrics["dpo_st"]["rounds"]["1"]["eval"]["test"]["n"] == 2


def _python_m(env: Env, argv: list[str], folder: Path) -> None:
    """``python -m selftrain`` in a process of its own, RECIPE the tiny recipe; without a
    second GPU the run stops before any stage with the error that says so."""
    import torch

    argv = [a if a != "RECIPE" else str(env.tiny_recipe()) for a in argv]
    src = str(Path(selftrain.__file__).parents[1])
    pythonpath = os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, *argv[1:], "--run-dir", "runs/r"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": pythonpath},
        timeout=300,
    )
    if torch.cuda.device_count() >= 2:
        assert done.returncode == 0, done.stderr[-3000:]
    else:
        assert done.returncode == 2, done.stderr[-3000:]
        assert "student.device is 'cuda:1'" in done.stderr
        assert not (folder / "runs/r/state.json").exists()


def _eval(env: Env, argv: list[str], folder: Path) -> dict:
    """``selftrain eval`` on the tiny model (``--model``), 2 questions a task."""
    if not any(
        t.partition(":")[0] == "arithmetic" for t in argv[argv.index("--tasks") + 1].split(",")
    ):
        env.need_data()
    argv = _replace(_replace(argv, "--limit", "2"), "--model", str(env.tiny))
    env.cli([*argv, *TINY_EVAL], folder)
    if "--out" in argv:
        out = folder / argv[argv.index("--out") + 1]
    else:  # evals/MODEL, MODEL+RUN-STAGE with an adapter
        adapter = Path(argv[argv.index("--adapter") + 1]) if "--adapter" in argv else None
        label = env.tiny.name + (f"+{adapter.parent.name}-{adapter.name}" if adapter else "")
        out = folder / "evals" / label
    summary = json.loads((out / "results.json").read_text())
    tasks = argv[argv.index("--tasks") + 1].split(",")
    assert sorted(summary["tasks"]) == sorted(tasks)
    assert all(r["n"] == 2 for r in summary["tasks"].values())
    return summary


def _eval_arithmetic(env: Env, argv: list[str], folder: Path) -> None:
    """The generated task without --split: its test split, in_domain, recorded as such."""
    summary = _eval(env, argv, folder)
    assert summary["tasks"]["arithmetic"]["split"] == "in_domain"


def _eval_compare_to(env: Env, argv: list[str], folder: Path) -> None:
    summary = _eval(env, argv, folder)
    assert summary["compare"]["tasks"]["gsm8k"]["n"] == 2


def _compare(env: Env, argv: list[str], folder: Path) -> None:
    """Two models of the demo run compared on their answers."""
    result = env.cli(argv, folder)
    assert "in_domain" in result.output and "out_of_domain" in result.output


def _tasks(env: Env, argv: list[str], folder: Path) -> None:
    """``../shared/data`` is the data beside the checkout: here, the data this test found."""
    env.need_data()
    assert argv[argv.index("--data-dir") + 1] == "../shared/data"
    result = env.cli(_replace(argv, "--data-dir", str(env.data)), folder)
    assert "gsm8k" in result.output and "error" not in result.output.lower()


def _demos_api(env: Env, argv: list[str], folder: Path) -> None:
    """An OpenAI-compatible teacher: the fake server at the README's --base-url, 2 questions;
    the key goes in the Authorization header."""
    env.need_data()
    argv = _replace(_replace(argv, "--base-url", f"{env.fake.url}/v1"), "--limit", "2")
    before = len(env.fake.headers)
    env.cli(argv, folder)
    task = argv[argv.index("--task") + 1]
    split = argv[argv.index("--split") + 1] if "--split" in argv else "train"
    demos = [json.loads(x) for x in (folder / f"demos/{task}.{split}.jsonl").open()]
    model = argv[argv.index("--model") + 1]
    n = int(argv[argv.index("--n-per-question") + 1]) if "--n-per-question" in argv else 1
    assert len(demos) == 2 * n and {d["teacher"] for d in demos} == {f"api:{model}"}
    headers = env.fake.headers[before:]
    assert headers and all(h.get("Authorization") == f"Bearer {API_KEY}" for h in headers)


def _demos_hf(env: Env, argv: list[str], folder: Path) -> None:
    """A local model as the teacher: the tiny model for path/to/model, 2 questions."""
    argv = _replace(_replace(argv, "--model", str(env.tiny)), "--limit", "2")
    env.cli([*argv, "--max-tokens", "8"], folder)
    demos = [json.loads(x) for x in (folder / "demos/arithmetic.train.jsonl").open()]
    assert len(demos) == 2 and demos[0]["teacher"].startswith("hf:")


def _demos_gold(env: Env, argv: list[str], folder: Path) -> None:
    """The dataset's rationales: the whole GSM8K train split, as the README has it."""
    env.need_data()
    env.cli(argv, folder)
    demos = [json.loads(x) for x in (folder / "demos/gsm8k.train.jsonl").open()]
    assert len(demos) > 7000 and all(d["kept"] and d["teacher"] == "gold" for d in demos)


def _accelerate_args(argv: list[str]):
    """accelerate's own parsing and validation of a launch command line (a config file is
    loaded and checked), and selftrain's parsing of the command it launches."""
    import click
    import typer
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(_in_repo(argv[2:]))
    assert args.module and args.training_script == "selftrain"
    with contextlib.redirect_stdout(None), contextlib.redirect_stderr(None):
        args, _, _ = _validate_launch_command(args)
    script = [a if a != "RECIPE" else "recipe.yaml" for a in _in_repo(args.training_script_args)]
    group = typer.main.get_command(app)
    command = group.get_command(click.Context(group, info_name="selftrain"), script[0])
    assert command is not None, script[0]
    command.make_context(script[0], script[1:])
    return args


def _accelerate_config(env: Env, argv: list[str], folder: Path, launch: bool = False) -> None:
    """An 8-GPU config file: loaded by accelerate, validated, and (``launch``) the command
    launched on the CPU as 1 process (``--cpu --num_processes 1``) on the tiny recipe."""
    from accelerate.commands.config.config_args import load_config_from_file

    config_file = ROOT / argv[argv.index("--config_file") + 1]
    config = load_config_from_file(str(config_file))
    assert config.num_processes == 8 and config.num_machines == 1 and not config.use_cpu
    assert config.mixed_precision == "no"  # the recipe sets the precision
    args = _accelerate_args(argv)
    assert args.num_processes == 8
    if "fsdp2" in config_file.name:
        assert config.distributed_type == "FSDP" and args.use_fsdp
        assert config.fsdp_config["fsdp_version"] == 2 and int(args.fsdp_version) == 2
    else:
        assert config.distributed_type == "MULTI_GPU" and args.multi_gpu
    if launch:
        _launch(env, argv, folder)


def _launch(env: Env, argv: list[str], folder: Path) -> None:
    launcher = Path(sys.executable).with_name("accelerate")
    if not launcher.exists():
        pytest.skip("accelerate's launcher is not installed beside this Python")
    i = argv.index("-m")
    cmd = [str(launcher), *_in_repo(argv[1:i]), "--cpu", "--num_processes", "1"]
    cmd += ["--num_machines", "1", "--dynamo_backend", "no", *argv[i:]]
    cmd = [a if a != "RECIPE" else str(env.tiny_recipe()) for a in cmd]
    src = str(Path(selftrain.__file__).parents[1])
    done = subprocess.run(
        [*cmd, "--run-dir", "runs/launched"],
        cwd=folder,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sft" in json.loads((folder / "runs/launched/metrics.json").read_text())


def _accelerate_cpu(env: Env, argv: list[str], folder: Path) -> None:
    """Two processes on the CPU: parsed and validated by accelerate here; the 2-process DDP
    and FSDP2 runs themselves are tests/e2e/test_distributed.py (marker distributed)."""
    args = _accelerate_args(argv)
    assert args.num_processes == 2
    assert (
        args.multi_gpu if "--multi_gpu" in argv else args.use_fsdp and int(args.fsdp_version) == 2
    )


def _accelerate_7b(env: Env, argv: list[str], folder: Path) -> None:
    """The 7B recipe under the FSDP2 config: the config and the recipe load and say what the
    README says (full fine-tuning, gradient checkpointing, vLLM); no 7B model runs here."""
    from selftrain.config import load_recipe

    _accelerate_config(env, argv, folder)
    recipe = load_recipe(ROOT / argv[argv.index("run") + 1])
    assert recipe.method == "dpo_st" and not recipe.student.lora.enabled
    assert recipe.student.gradient_checkpointing and recipe.sampling.engine == "vllm"
    assert argv[-2:] == ["--run-dir", "runs/dpo-st-7b"]


def _report(env: Env, argv: list[str], folder: Path) -> None:
    """``selftrain report`` on make demo's run: the same bytes as the run's end wrote."""
    run = folder / argv[1]
    names = ["report.md", "accuracy.png", "sft_validation.png", "pass_at_k.png"]
    before = {n: (run / n).read_bytes() for n in names}
    result = env.cli(argv, folder)
    assert {n: (run / n).read_bytes() for n in names} == before
    assert "report.md" in result.output and "## Paired comparisons" in before["report.md"].decode()


def _stage(env: Env, argv: list[str], folder: Path) -> None:
    """A per-stage command on the default recipe made tiny, in the run directory the commands
    before it left: it writes its stage's files and marks that stage done."""
    from selftrain.pipeline.srit import STAGES

    env.cli([*argv, "--set", f"student.model={env.tiny}", *_sets(TINY)], folder)
    run_dir, stage = folder / argv[argv.index("--run-dir") + 1], STAGES[argv[0]]
    assert (run_dir / stage.file).exists(), stage.file
    assert json.loads((run_dir / "state.json").read_text())["done"][-1] == stage.stage


def _run_after_stages(env: Env, argv: list[str], folder: Path) -> None:
    """``selftrain run`` after the stage commands: it finishes the run, redoing none of them."""
    state = folder / "runs/steps/state.json"
    before = json.loads(state.read_text())["stages"]
    _run_tiny(env, argv, folder)
    after = json.loads(state.read_text())["stages"]
    assert all(after[name] == record for name, record in before.items())


def _export(env: Env, argv: list[str], folder: Path) -> None:
    """``selftrain export`` of make demo's run: the folder loads with transformers and its
    card has the run's accuracy; ``--gguf`` writes the file; ``--push-to-hub`` against a hub
    that cannot be reached (a closed port) is one line, the export kept."""
    from huggingface_hub import constants
    from transformers import AutoConfig

    out = folder / argv[2]
    if "--push-to-hub" in argv:
        endpoint, constants.ENDPOINT = constants.ENDPOINT, "http://127.0.0.1:9"
        try:
            result = env.cli(argv, folder, code=2)
        finally:
            constants.ENDPOINT = endpoint
        assert "error: --push-to-hub me/demo-rft: " in result.output
    else:
        env.cli(argv, folder)
    assert AutoConfig.from_pretrained(out).model_type == "llama"
    assert "| **" in (out / "README.md").read_text()  # this model's accuracy row
    if "--gguf" in argv:
        assert (out / f"{out.name}-f16.gguf").stat().st_size > 0
    if "--max-shard-size" in argv:
        assert str(AutoConfig.from_pretrained(out).dtype) in ("bfloat16", "torch.bfloat16")


def _export_data(env: Env, argv: list[str], folder: Path) -> None:
    """``selftrain export-data`` on make demo's run: every table loads back with ``datasets``
    (``--format parquet``: with pyarrow, which also reads a table with no rows), one row per
    pair of the run's pairs.jsonl (none in the tiny demo: no sampled path is right)."""
    import datasets
    import pyarrow.parquet as pq

    env.cli(argv, folder)
    out, parquet = folder / argv[2], "parquet" in argv
    for name in ("pairs", "sft", "samples"):
        if parquet:
            table = pq.read_table(out / f"{name}.parquet")
            rows, columns = table.num_rows, table.column_names
        else:
            table = datasets.load_from_disk(str(out / name))
            rows, columns = len(table), table.column_names
        if name == "pairs":
            pairs = (folder / "runs/demo/pairs.jsonl").read_text().splitlines()
            assert rows == len(pairs) and {"prompt", "chosen", "rejected"} <= set(columns)
        else:
            assert rows > 0, name


# recipes/custom_jsonl.yaml, tiny: 4 demonstrations, 2 sampled questions, 2 questions a split
TINY_OWN_DATA = {
    **{k: v for k, v in TINY.items() if not k.startswith("task.")},
    "sampling.offset": 4,
    "teacher.n_questions": 4,
    "sampling.n_questions": 2,
    "sft_more": "false",
    "eval.evaluate_base": "false",
}


def _run_own_data(env: Env, argv: list[str], folder: Path) -> None:
    """The README's own-data recipe from a copy of the checkout's examples/ (its path is read
    from the current directory), tiny; the gold rationales of the file are the demonstrations."""
    shutil.copytree(ROOT / "examples", folder / "examples", dirs_exist_ok=True)
    env.cli([*_in_repo(argv), "--set", f"student.model={env.tiny}", *_sets(TINY_OWN_DATA)], folder)
    run = folder / argv[argv.index("--run-dir") + 1]
    demos = [json.loads(x) for x in (run / "demos.jsonl").open()]
    assert len(demos) == 4 and all(d["teacher"] == "gold" and d["kept"] for d in demos)
    assert json.loads((run / "metrics.json").read_text())["rft"]["test"]["n"] == 2


def _eval_own_data(env: Env, argv: list[str], folder: Path) -> None:
    """``eval --task-arg`` on the same file and split as the run: --model tiny, --limit 2."""
    env.cli([*argv, "--model", str(env.tiny), "--limit", "2", *TINY_EVAL], folder)
    adapter = Path(argv[argv.index("--adapter") + 1])
    out = folder / "evals" / f"{env.tiny.name}+{adapter.parent.name}-{adapter.name}"
    result = json.loads((out / "results.json").read_text())["tasks"]["custom"]
    assert result["n"] == 2 and result["split"] == "test"


DEMO = "make demo"
STAGE_SFT = "selftrain sft --run-dir runs/steps"
STAGE_SAMPLE = "selftrain sample --run-dir runs/steps"
STAGE_PAIRS = "selftrain pairs --run-dir runs/steps"
STAGE_RFT = "selftrain rft --run-dir runs/steps"
EVAL_SFT = "selftrain eval --adapter runs/demo/sft --tasks gsm8k --out evals/sft"
OWN_DATA = "selftrain run src/selftrain/recipes/custom_jsonl.yaml --run-dir runs/mine"

CASES: dict[str, Case] = {
    DEMO: Case("the Makefile's command, `selftrain run --run-dir runs/demo`, tiny", _make_demo),
    "make test": Case("the Makefile target is pytest over tests/", _make_test),
    "make lint": Case("the Makefile's two ruff commands, run", _make_lint),
    '.venv/bin/python -m pytest -m "not e2e and not llama_server"': Case(
        "its markers are registered", _pytest_markers
    ),
    "selftrain run": Case("--set: the default recipe tiny", _run_tiny),
    "selftrain run my_recipe.yaml --run-dir runs/x": Case(
        "my_recipe.yaml: the tiny recipe", _run_recipe_file
    ),
    "selftrain run --set dpo.beta=0.2 --set sampling.k=8": Case(
        "--set: the default recipe tiny", _run_overrides
    ),
    "selftrain tasks --data-dir ../shared/data": Case("the data found", _tasks),
    (
        "selftrain eval --tasks gsm8k,multiarith,svamp,csqa,obqa,piqa,arc_challenge,mmlu "
        "--limit 100"
    ): (Case("--model tiny --limit 2", _eval)),
    "selftrain eval --adapter runs/demo/rft --tasks arithmetic --calculator": Case(
        "--model tiny --limit 2, on make demo's run", _eval_arithmetic, after=DEMO
    ),
    "selftrain eval --tasks csqa,piqa,mmlu:stem --scoring loglik": Case(
        "--model tiny --limit 2", _eval
    ),
    "selftrain eval --tasks gsm8k,svamp,asdiv --train-task gsm8k --style fewshot": Case(
        "--model tiny --limit 2", _eval
    ),
    EVAL_SFT: Case("--model tiny --limit 2, on make demo's run", _eval, after=DEMO),
    (
        "selftrain eval --adapter runs/demo/rft --tasks gsm8k --out evals/rft --compare-to "
        "evals/sft"
    ): (Case("--model tiny --limit 2, after evals/sft", _eval_compare_to, after=EVAL_SFT)),
    "selftrain report runs/demo": Case("as it is, on make demo's run", _report, after=DEMO),
    "selftrain compare runs/demo/eval/rft runs/demo/eval/sft": Case(
        "as it is, on make demo's run", _compare, after=DEMO
    ),
    "selftrain export-data runs/demo data/demo": Case(
        "as it is, on make demo's run", _export_data, after=DEMO
    ),
    "selftrain export-data runs/demo data/demo-parquet --format parquet": Case(
        "as it is, on make demo's run", _export_data, after=DEMO
    ),
    "selftrain run src/selftrain/recipes/dpo_st_gsm8k.yaml": Case(
        "--set: tiny model, 1 round, 2 questions a set", _run_dpo_st_gsm8k
    ),
    "python -m selftrain run RECIPE --set student.device=cuda:1": Case(
        "a process of its own, the tiny recipe", _python_m
    ),
    (
        "accelerate launch --config_file src/selftrain/recipes/accelerate/ddp_8gpu.yaml -m "
        "selftrain run RECIPE"
    ): (Case("config loaded and validated, command line parsed", _accelerate_config)),
    (
        "accelerate launch --config_file src/selftrain/recipes/accelerate/fsdp2_8gpu.yaml -m "
        "selftrain run RECIPE"
    ): (
        Case(
            "config validated; launched with --cpu --num_processes 1 on the tiny recipe",
            lambda env, argv, folder: _accelerate_config(env, argv, folder, launch=True),
        )
    ),
    "accelerate launch --multi_gpu --num_processes 2 -m selftrain run RECIPE": Case(
        "parsed and validated (runs: test_distributed.py)", _accelerate_cpu
    ),
    "accelerate launch --use_fsdp --fsdp_version 2 --num_processes 2 -m selftrain run RECIPE": (
        Case("parsed and validated (runs: test_distributed.py)", _accelerate_cpu)
    ),
    (
        "accelerate launch --config_file src/selftrain/recipes/accelerate/fsdp2_8gpu.yaml -m "
        "selftrain run src/selftrain/recipes/dpo_st_gsm8k_7b.yaml --run-dir runs/dpo-st-7b"
    ): (Case("config and recipe loaded and validated", _accelerate_7b)),
    (
        "selftrain demos --teacher api --model gpt-4o-mini --task gsm8k --limit 500 "
        "--n-per-question 2 --temperature 0.7 --family out-family --price-input 0.15 "
        "--price-output 0.6"
    ): (Case("the fake server, --limit 2", _demos_api)),
    (
        "selftrain demos --teacher api --base-url http://localhost:8000/v1 --model "
        "meta-llama/Llama-3.1-8B-Instruct --task csqa"
    ): (Case("the fake server, --limit 2", _demos_api)),
    (
        "selftrain demos --teacher api --base-url http://localhost:8080/v1 --model local "
        "--task svamp --split test"
    ): (Case("the fake server, --limit 2", _demos_api)),
    (
        "selftrain demos --teacher api --base-url http://localhost:11434/v1 --model llama3.1 "
        "--task aqua --split test"
    ): (Case("the fake server, --limit 2", _demos_api)),
    "selftrain demos --teacher hf --model path/to/model --task arithmetic --limit 100": Case(
        "the tiny model, --limit 2", _demos_hf
    ),
    "selftrain demos --teacher gold --task gsm8k": Case("as it is", _demos_gold),
    STAGE_SFT: Case("--set: the default recipe tiny", _stage),
    STAGE_SAMPLE: Case("--set: tiny, after sft", _stage, after=STAGE_SFT),
    STAGE_PAIRS: Case("--set: tiny, after sample", _stage, after=STAGE_SAMPLE),
    STAGE_RFT: Case("--set: tiny, after pairs", _stage, after=STAGE_PAIRS),
    "selftrain run --run-dir runs/steps": Case(
        "--set: tiny, after the stage commands", _run_after_stages, after=STAGE_RFT
    ),
    "selftrain export runs/demo/rft exported/demo-rft": Case(
        "as it is, on make demo's run", _export, after=DEMO
    ),
    "selftrain export runs/demo/sft exported/demo-sft --dtype bfloat16 --max-shard-size 500MB": (
        Case("as it is, on make demo's run", _export, after=DEMO)
    ),
    "selftrain export runs/demo/rft exported/demo-gguf --gguf f16": Case(
        "as it is, on make demo's run", _export, after=DEMO
    ),
    "selftrain export runs/demo/rft exported/demo-hub --push-to-hub me/demo-rft --private": Case(
        "a hub that cannot be reached: one line", _export, after=DEMO
    ),
    "selftrain run --set teacher.kind=api --set teacher.model=gpt-4o-mini --run-dir runs/gpt": (
        Case("--set: tiny, teacher.base_url the fake server", _run_api_teacher)
    ),
    OWN_DATA: Case("--set: tiny model, 4 demonstrations, 2 questions a split", _run_own_data),
    (
        "selftrain eval --tasks custom --task-arg path=examples/arithmetic.jsonl --calculator "
        '--task-arg "split_sizes={train: 300, validation: 50, test: 50}" --adapter runs/mine/rft'
    ): (Case("--model tiny --limit 2, on the own-data run", _eval_own_data, after=OWN_DATA)),
}


def test_every_readme_command_has_a_case():
    commands = readme_commands(README.read_text(encoding="utf-8"))
    missing = [c for c in commands if c not in CASES]
    assert not missing, f"README commands no test runs (add them to CASES): {missing}"
    gone = [c for c in CASES if c not in commands]
    assert not gone, f"CASES for commands the README no longer shows: {gone}"


def _ensure(env: Env, command: str) -> None:
    """Run ``command``'s case once (and what it needs first)."""
    if command in env.done:
        if env.done[command] is None:
            pytest.fail(f"{command!r}, which this one needs, failed")
        return
    case = CASES[command]
    chain, first = [], command
    while CASES[first].after:
        first = CASES[first].after
        chain.append(first)
    for needed in reversed(chain):
        _ensure(env, needed)
    folder = env.folder(re.sub(r"\W+", "_", first)[:60])
    env.done[command] = None
    argv = shlex.split(command)
    if argv[0] == "selftrain":
        argv = argv[1:]
    case.run(env, argv, folder)
    env.done[command] = True


@pytest.mark.parametrize("command", list(CASES), ids=list(CASES))
def test_readme_command_runs(env, command):
    _ensure(env, command)
