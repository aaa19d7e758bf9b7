"""DPO-ST's results by round: the Markdown tables, the report and the accuracy plot, all read
from metrics.json's content and the recipe (so `selftrain report` rebuilds them)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selftrain.config import DPOSTRecipe
from selftrain.io import write_text_atomic
from selftrain.pipeline.plots import lines, panels
from selftrain.progress import console
from selftrain.rundir import RunDir

ARM_NAMES = {"dpo_st": "DPO-ST", "self_training": "self-training"}


def _pct(r: Any) -> str:
    return f"{100 * r['accuracy']:.1f}" if isinstance(r, dict) and "accuracy" in r else "-"


def rounds_of(metrics: dict, arm: str) -> list[tuple[int, dict]]:
    """(round, that round's metrics) of an arm, in order."""
    rounds = metrics.get(arm, {}).get("rounds", {}) if isinstance(metrics.get(arm), dict) else {}
    return sorted(((int(r), v) for r, v in rounds.items()), key=lambda x: x[0])


def curve(metrics: dict, arm: str, label: str) -> list[tuple[int, float]]:
    """(round, accuracy) of an arm on one evaluation set, round 0 being the warm-up."""
    points = []
    warm = metrics.get("warmup", {}).get("eval", {}).get(label)
    if warm:
        points.append((0, warm["accuracy"]))
    for r, m in rounds_of(metrics, arm):
        if label in m.get("eval", {}):
            points.append((r, m["eval"][label]["accuracy"]))
    return points


def round_table(metrics: dict, arms: Sequence[str], labels: Sequence[str]) -> str:
    """Markdown table: one row per arm and round (the warm-up first), accuracy (%) per
    evaluation set, the samplers' pass@k, pairs and pseudo-labels kept."""
    head = [
        "arm",
        "round",
        *labels,
        "pass@k DPO step",
        "pass@k SFT step",
        "pairs",
        "pseudo-labels",
        "SFT examples",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    warm = metrics.get("warmup", {})
    cells = [
        "warm-up",
        "0",
        *(_pct(warm.get("eval", {}).get(x)) for x in labels),
        "-",
        "-",
        "-",
        "-",
        str(warm.get("training", {}).get("examples", "-")),
    ]
    lines.append("| " + " | ".join(cells) + " |")
    for arm in arms:
        for r, m in rounds_of(metrics, arm):

            def pk(key: str, m: dict = m) -> str:
                s = m.get(key)
                return f"{100 * s['pass@k']:.1f} (k={s['k']})" if s else "-"

            cells = [
                ARM_NAMES.get(arm, arm),
                str(r),
                *(_pct(m.get("eval", {}).get(x)) for x in labels),
                pk("dpo_samples"),
                pk("sft_samples"),
                str(m.get("pairs", {}).get("pairs", "-")),
                _pseudo(m.get("pseudo_labels", {})),
                str(m.get("pseudo_labels", {}).get("examples", "-")),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pseudo(p: dict) -> str:
    """Pseudo-labels kept, and how many answer-only questions they cover when there are any."""
    if "pseudo_labels" not in p:
        return "-"
    if not p.get("answer_only_questions"):
        return str(p["pseudo_labels"])
    covered = f"{p['answer_only_covered']}/{p['answer_only_questions']}"
    return f"{p['pseudo_labels']} ({covered} answer-only)"


def calculator_table(metrics: dict, labels: Sequence[str]) -> str:
    """Markdown table: each model's accuracy (%) with and without the calculator."""
    calc = metrics.get("calculator", {})
    if not calc:
        return ""
    head = ["model", *(f"{x} with / without" for x in labels)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, per in calc.items():
        cells = [model]
        for x in labels:
            v = per.get(x)
            cells.append(
                f"{100 * v['with']:.1f} / {100 * v['without']:.1f} (n={v['n']})" if v else "-"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def report_markdown(
    metrics: dict, recipe: DPOSTRecipe, arms: Sequence[str], labels: Sequence[str]
) -> str:
    """The run's report: the settings that matter, the table by round, the calculator's effect,
    the stage timings."""
    cfg, sampling = recipe.dpo_st, recipe.sampling
    parts = [
        f"# {recipe.name}: DPO-augmented self-training\n",
        f"Student `{recipe.student.model}` on task `{recipe.task.name}`; arms: "
        f"{', '.join(ARM_NAMES.get(a, a) for a in arms)} from one warm-up SFT; {cfg.rounds} "
        f"rounds. DPO step: k={sampling.k} samples/question at T={sampling.temperature}, Jaccard "
        f"threshold {cfg.similarity_threshold}, {cfg.pairs_per_question} least-similar pairs "
        f"per question, {cfg.dpo.loss} loss, beta {cfg.dpo.beta}, NLL weight "
        f"{cfg.dpo.nll_weight}. SFT step: {cfg.sft_k} samples/question, next SFT from the "
        f"{cfg.sft_init} model. Calculator while decoding: {recipe.calculator}.\n",
        "## Accuracy (%, greedy) by round\n",
        "Round 0 is the shared warm-up. pass@k: share of training questions with at least one "
        "correct sampled path.\n",
        round_table(metrics, arms, labels),
        "![accuracy by round](accuracy_by_round.png)\n",
    ]
    calc = calculator_table(metrics, labels)
    if calc:
        parts += ["## The calculator's effect (accuracy %, same model and questions)\n", calc]
    secs = metrics.get("stage_seconds", {})
    if secs:
        parts.append(f"Total stage time: {sum(secs.values()) / 60:.1f} min.\n")
    return "\n".join(parts)


def plot_accuracy(
    metrics: dict, arms: Sequence[str], labels: Sequence[str], path: str | Path
) -> None:
    """accuracy_by_round.png: one panel per evaluation set, one line per arm."""
    with panels(path, len(labels)) as axes:
        for ax, label in zip(axes, labels, strict=False):
            series = {
                ARM_NAMES.get(arm, arm): [(r, 100 * y) for r, y in curve(metrics, arm, label)]
                for arm in arms
            }
            lines(ax, series, label, "round", "accuracy (%)", integer_x=True)


def arms(recipe: DPOSTRecipe) -> list[str]:
    """The arms a recipe runs: its method first, then its baselines."""
    out = [recipe.method]
    out += [b for b in recipe.dpo_st.baselines if b not in out]
    return out


def labels(recipe: DPOSTRecipe) -> list[str]:
    """The evaluation sets' labels: the task's splits, then the other tasks'."""
    return [*recipe.eval.splits, *(t.label or t.name for t in recipe.dpo_st.eval_tasks)]


def write_files(run_dir: Path, recipe: DPOSTRecipe, metrics: dict) -> list[Path]:
    """report.md and accuracy_by_round.png in ``run_dir``; returns their paths."""
    report, plot = run_dir / "report.md", run_dir / "accuracy_by_round.png"
    write_text_atomic(report, report_markdown(metrics, recipe, arms(recipe), labels(recipe)))
    plot_accuracy(metrics, arms(recipe), labels(recipe), plot)
    return [report, plot]


def print_tables(rd: RunDir, recipe: DPOSTRecipe) -> None:
    """The tables of report.md on the console (rank 0)."""
    console.print("accuracy (%, greedy) by round; round 0 is the shared warm-up")
    console.print(
        round_table(rd.metrics, arms(recipe), labels(recipe)), markup=False, soft_wrap=True
    )
    calc = calculator_table(rd.metrics, labels(recipe))
    if calc:
        console.print("the calculator's effect (accuracy %, with / without)")
        console.print(calc, markup=False, soft_wrap=True)
    console.print(f"report: {rd / 'report.md'}; stage seconds: {rd.state['seconds']}")
