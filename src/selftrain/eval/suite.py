"""``selftrain eval``: accuracy of one model on many benchmark tasks.

Each task is scored either generatively (the model writes its reasoning and an answer, judged
by ``task.is_correct``; the same :func:`selftrain.eval.generative.evaluate` as the training
loop) or, for multiple choice and yes/no, by the log-likelihood of each option as evaluation
harnesses do (:func:`selftrain.eval.loglik.evaluate_loglik`). Every answer is appended to
``OUT/<task>.<scoring>.jsonl`` as it is made, so a rerun resumes; the settings that made
them (model, checkpoint, prompt, split, decoding) go beside it in
``OUT/<task>.<scoring>.settings.json``, and a rerun with other settings is refused rather than
mixing two models' answers. The summary goes to ``OUT/results.json`` and ``OUT/results.md``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selftrain.config import LoraConfig, StudentConfig
from selftrain.eval.generative import correct_by_id, evaluate
from selftrain.eval.loglik import evaluate_loglik
from selftrain.io import read_json, write_json_atomic, write_text_atomic
from selftrain.models import Student, checkpoint_files, checkpoint_folder
from selftrain.progress import log
from selftrain.records import sha256
from selftrain.runtime import Runtime
from selftrain.stats import compare
from selftrain.tasks.base import Example
from selftrain.tasks.benchmark import BenchmarkTask

__all__ = [
    "answer_settings",
    "check_out_dir",
    "compare_folders",
    "compare_table",
    "load_student",
    "markdown_table",
    "run_eval",
    "spread",
    "task_family",
]

SCORING = ("generate", "loglik", "auto")


def spread(examples: list[Example], limit: int | None) -> list[Example]:
    """``limit`` examples evenly spaced over the split (all when ``limit`` is None): the first
    N of MMLU would all be one subject, the first N of MATH mostly one level."""
    if limit is None or limit >= len(examples):
        return examples
    return [examples[i * len(examples) // limit] for i in range(limit)]


def task_family(name: str) -> str:
    """``mmlu:stem`` -> ``mmlu``; used to tell in-domain from out-of-domain tasks."""
    return name.partition(":")[0]


def load_student(
    model: str,
    gguf_file: str | None = None,
    adapter: Path | None = None,
    device: str = "auto",
    autocast_bf16: bool | str = "auto",
    system_prompt: str | None = None,
) -> tuple[Student, str]:
    """The student to evaluate (without LoRA; with a run's checkpoint ``adapter`` on top) and
    its label: the model's name, plus the checkpoint's run and stage. Under accelerate launch
    every process loads it and scores a share of the questions."""
    cfg = StudentConfig(
        model=model,
        gguf_file=gguf_file,
        device=device,
        autocast_bf16=autocast_bf16,
        system_prompt=system_prompt,
        lora=LoraConfig(enabled=False),
    )
    if adapter is not None:
        checkpoint_folder(adapter)  # a missing checkpoint is named before the model loads
    student = Student.load(cfg, Runtime.start(device))
    if adapter is not None:
        student.apply_checkpoint(adapter)
    label = Path(model).name + (f"+{adapter.parent.name}-{adapter.name}" if adapter else "")
    return student, label


def run_eval(
    student: Student,
    tasks: Sequence[BenchmarkTask],
    out_dir: Path,
    *,
    limit: int | None = None,
    split: str | None = None,
    scoring: str = "generate",
    batch_size: int = 64,
    max_new_tokens: int | None = None,
    calculator: bool = False,
    train_task: str | None = None,
    model_name: str = "",
    compare_to: Path | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate ``student`` on every task; write and return the results. With
    ``compare_to`` (another model's output folder), also the paired comparison of the two on
    the questions both answered (:func:`compare_folders`).

    Answers already in ``out_dir`` are resumed only when they were made with the same
    :func:`answer_settings` (plus ``settings``, anything else the caller wants kept equal);
    otherwise a ValueError names the settings that differ. ``limit`` and ``batch_size`` do
    not change an answer and may differ."""
    if scoring not in SCORING:
        raise ValueError(f"scoring must be one of {', '.join(SCORING)}, not {scoring!r}")
    check_out_dir(out_dir)
    results: dict[str, Any] = {}
    if student.runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    student.runtime.barrier()
    planned = []
    for task in tasks:  # every task's settings checked before any question is answered
        mode = _scoring_of(task, scoring)
        out = out_dir / f"{_file_name(task.name)}.{mode}.jsonl"
        key = answer_settings(student, task, mode, split, max_new_tokens, calculator)
        key.update(settings or {})
        _check_settings(out, key)
        planned.append((task, mode, out, key))
    for task, mode, out, key in planned:
        examples = spread(task.load(split), limit)
        if student.runtime.is_main:
            write_json_atomic(_settings_path(out), key)
        start = time.monotonic()
        if mode == "loglik":
            res = evaluate_loglik(
                student, task, examples, batch_size=batch_size, out=out, label=task.name
            )
        else:
            res = evaluate(
                student,
                task,
                examples,
                max_new_tokens=max_new_tokens or task.max_new_tokens(),
                batch_size=batch_size,
                out=out,
                label=task.name,
                calculator=calculator,
                stop=task.stop_regex,
            )
        res["scoring"] = mode
        res["split"] = split or task.test_split
        res["seconds"] = round(time.monotonic() - start, 1)
        if train_task:
            same = task_family(task.name) == task_family(train_task)
            res["domain"] = "in_domain" if same else "out_of_domain"
        results[task.name] = res
    summary = _summary(model_name, results, train_task)
    if compare_to is not None:
        summary["compare"] = {
            "against": str(compare_to),
            "tasks": compare_folders(out_dir, compare_to, only=[f"{t.name}" for t in tasks]),
        }
    if student.runtime.is_main:
        write_json_atomic(out_dir / "results.json", summary)
        write_text_atomic(out_dir / "results.md", markdown_table(summary))
    return summary


def check_out_dir(out_dir: Path) -> None:
    """A ValueError unless ``out_dir`` is a folder or can be made one (cheap: call it before
    loading a model)."""
    out_dir = Path(out_dir)
    hint = "give --out a folder (a new one, or an earlier evaluation's to resume it)"
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"OUT is a file, not a folder: {out_dir}; {hint}")
    above = next((p for p in out_dir.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise ValueError(f"OUT is inside a file, not a folder: {out_dir} ({above}); {hint}")


def answer_settings(
    student: Student,
    task: BenchmarkTask,
    mode: str,
    split: str | None,
    max_new_tokens: int | None,
    calculator: bool,
) -> dict[str, Any]:
    """Everything that changes ``student``'s answers to ``task`` under ``mode`` (generate or
    loglik): the model, the checkpoint on it (a hash of its weight files), precision, system
    prompt, split, the data (tasks with a ``data_key``: an edited file is not served stale
    answers) and, when generating, prompting style and decoding. Log-likelihood scoring
    reads the bare question, so its key has no style, shots or decoding budget."""
    cfg = student.cfg
    model = Path(cfg.model).expanduser()
    generate = mode == "generate"
    style = getattr(task, "style", None) if generate else None
    return {
        "task": task.name,
        "model": str(model.resolve()) if model.exists() else cfg.model,
        "gguf_file": cfg.gguf_file,
        "adapter_sha256": "+".join(sha256(f)[0] for f in checkpoint_files(student.checkpoint))
        if student.checkpoint
        else None,
        "precision": "bf16" if cfg.autocast_bf16 else "fp32",
        "system_prompt": cfg.system_prompt,
        "scoring": mode,
        "split": split or task.test_split,
        "style": style,
        "n_shots": getattr(task, "n_shots", None) if style == "fewshot" else None,
        "max_new_tokens": (max_new_tokens or task.max_new_tokens()) if generate else None,
        "calculator": calculator if generate else None,
        # a task read from the user's files (custom): a hash of the data and how it is read
        "data": task.data_key() if callable(getattr(task, "data_key", None)) else None,
    }


def _settings_path(answers: Path) -> Path:
    return answers.with_name(answers.name.removesuffix(".jsonl") + ".settings.json")


def _check_settings(answers: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume the answers in ``answers`` when they were made with other settings
    (every process checks, so every process stops)."""
    path = _settings_path(answers)
    if not answers.exists() or not answers.stat().st_size:
        return  # no answers yet: nothing to mix up
    if not path.exists():
        log.warning(
            "%s has answers but no %s (an older selftrain): resuming them as made with "
            "this command's settings",
            answers,
            path.name,
        )
        return
    old = read_json(path)
    if not isinstance(old, dict):
        raise ValueError(f"{path}: not a settings object; delete it and {answers.name}")
    diff = [
        f"{k} {_shown(old.get(k))} -> {_shown(settings.get(k))}"
        for k in dict.fromkeys([*old, *settings])
        if old.get(k) != settings.get(k)
    ]
    if diff:
        raise ValueError(
            f"{answers.parent} holds answers to {settings.get('task')} made with other "
            f"settings ({'; '.join(diff)}): use another --out, or delete {answers.name} and "
            f"{path.name} to start over"
        )


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scoring_of(task: BenchmarkTask, scoring: str) -> str:
    """``generate`` or ``loglik`` for ``task`` (``auto``: log-likelihood where it has options)."""
    mode = scoring
    if mode == "auto":
        mode = "loglik" if task.kind in ("choice", "yesno") else "generate"
    if mode == "loglik" and task.kind not in ("choice", "yesno"):
        raise ValueError(
            f"task {task.name} has free-form answers; log-likelihood scoring needs options"
        )
    return mode


def _summary(model_name: str, results: dict[str, Any], train_task: str | None) -> dict[str, Any]:
    """The results of every task, with the mean accuracy in and out of the training domain."""
    summary: dict[str, Any] = {"model": model_name, "tasks": results}
    if train_task:
        for domain in ("in_domain", "out_of_domain"):
            accs = [r["accuracy"] for r in results.values() if r.get("domain") == domain]
            if accs:
                summary[domain] = {"mean_accuracy": round(sum(accs) / len(accs), 4)}
    return summary


def compare_folders(a: Path, b: Path, only: Sequence[str] | None = None) -> dict[str, dict]:
    """Paired comparison of two models' answers, task by task: ``a`` and ``b`` are output
    folders of ``selftrain eval`` (``TASK.MODE.jsonl``) or of a run (``runs/NAME/eval/sft``:
    ``SPLIT.jsonl``); every file name both hold (of the tasks in ``only``, if given) is compared
    on the question ids both answered (:func:`selftrain.stats.compare`, A minus B)."""
    out: dict[str, dict] = {}
    for path in sorted(Path(a).glob("*.jsonl")):
        other = Path(b) / path.name
        name = path.name.removesuffix(".jsonl")
        for mode in (".generate", ".loglik"):
            name = name.removesuffix(mode)
        if not other.is_file() or (only is not None and name not in {_file_name(t) for t in only}):
            continue
        out[name] = compare(correct_by_id(path), correct_by_id(other))
    if not out:
        raise ValueError(
            f"{a} and {b} hold no answers to the same task (no JSONL file of the same name): "
            "compare the output folders of two evaluations of the same tasks"
        )
    return out


def _file_name(task: str) -> str:
    return task.replace(":", "_")


def compare_table(comparisons: dict[str, dict], a: str = "A", b: str = "B") -> str:
    """Paired comparisons as a Markdown table."""
    lines = [
        f"# {a} vs {b} (paired: the same questions)",
        "",
        f"| task | n | {a} | {b} | difference | 95% CI | McNemar p | {a} only | {b} only |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in comparisons.items():
        lo, hi = c["ci95"]
        lines.append(
            f"| {name} | {c['n']} | {100 * c['a']:.1f} | {100 * c['b']:.1f} "
            f"| {100 * c['diff']:+.1f} | {100 * lo:+.1f} to {100 * hi:+.1f} "
            f"| {c['p_value']:.3g} | {c['a_only']} | {c['b_only']} |"
        )
    return "\n".join(lines) + "\n"


def markdown_table(summary: dict[str, Any]) -> str:
    """The results as a Markdown table (grouped by domain when a train task was given)."""
    lines = [
        f"# Evaluation of {summary.get('model') or 'the model'}",
        "",
        "| task | domain | scoring | split | n | accuracy | 95% CI | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = sorted(summary["tasks"].items(), key=lambda kv: (kv[1].get("domain", ""), kv[0]))
    for name, r in rows:
        lo, hi = r["ci95"]
        lines.append(
            f"| {name} | {r.get('domain', '-')} | {r['scoring']} | {r['split']} | {r['n']} "
            f"| {100 * r['accuracy']:.1f} | {100 * lo:.1f}-{100 * hi:.1f} | {r['seconds']} |"
        )
    for domain in ("in_domain", "out_of_domain"):
        if domain in summary:
            acc = summary[domain]["mean_accuracy"]
            lines.append(f"| mean | {domain} | | | | {100 * acc:.1f} | | |")
    text = "\n".join(lines) + "\n"
    if "compare" in summary:
        text += "\n" + compare_table(
            summary["compare"]["tasks"], "this model", summary["compare"]["against"]
        )
    return text
