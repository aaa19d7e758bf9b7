"""SRIT's report: report.md and its plots, read from the run directory's files (metrics.json,
the recipe, sft/history.json, dpo/history.json and samples.jsonl), so `selftrain report`
rebuilds the bytes the run's end wrote.

  accuracy.png        each model's greedy accuracy per evaluation set, 95% Wilson intervals
  sft_validation.png  stage 1's validation checks: accuracy, and the losses
  dpo_training.png    DPO per step: loss, reward accuracy and margin, log-prob drift
  pass_at_k.png       the student's sampled paths: pass@j for j = 1..k
"""

from __future__ import annotations

from math import comb
from pathlib import Path
from typing import Any

from selftrain.config import SRITRecipe
from selftrain.io import read_json, read_jsonl, write_text_atomic
from selftrain.pipeline.plots import interval_bars, lines, panels

MODELS = ("base", "sft", "rft", "dpo", "sft_more")  # in the order they are trained
TRAINING = {"sft": "sft_training", "rft": "rft_training", "dpo": "dpo_training",
            "sft_more": "sft_more_training"}  # fmt: skip
ACCURACY, SFT, DPO, PASS = "accuracy.png", "sft_validation.png", "dpo_training.png", "pass_at_k.png"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(out + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def models(metrics: dict, splits: list[str]) -> list[str]:
    """The evaluated models of a run, in training order."""
    return [
        m
        for m in MODELS
        if isinstance(metrics.get(m), dict)
        and any(isinstance(metrics[m].get(s), dict) for s in splits)
    ]


def accuracy_table(metrics: dict, splits: list[str]) -> str:
    """One row per model: accuracy (%), its 95% Wilson interval and n per evaluation set."""
    rows = []
    for m in models(metrics, splits):
        cells = [m]
        for s in splits:
            v = _interval(metrics[m].get(s))
            n = metrics[m][s].get("n", "-") if v else "-"
            cells.append(f"{v[0]:.1f} [{v[1]:.1f}, {v[2]:.1f}] (n={n})" if v else "-")
        rows.append(cells)
    return _table(["model", *splits], rows)


def compare_table(metrics: dict) -> str:
    """One row per paired comparison and evaluation set (metrics.json's ``compare``)."""
    rows = []
    for name, by_split in metrics.get("compare", {}).items():
        a, _, b = name.partition("_vs_")
        for s, c in by_split.items():
            lo, hi = c["ci95"]
            rows.append([
                f"{a} vs {b}", s, _pct(c["a"]), _pct(c["b"]),
                f"{100 * c['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
                f"{c['p_value']:.3g}", f"{c['a_only']} / {c['b_only']}", str(c["n"]),
            ])  # fmt: skip
    head = ["comparison", "set", "A (%)", "B (%)", "A - B [95% interval]", "McNemar p",
            "A only / B only", "n"]  # fmt: skip
    return _table(head, rows) if rows else ""


def training_table(metrics: dict) -> str:
    """One row per training stage: its data, steps, and the best step or why it was skipped."""
    rows = []
    for model, key in TRAINING.items():
        t = metrics.get(key)
        if not isinstance(t, dict):
            continue
        if "skipped" in t:
            rows.append([model, "-", "-", f"skipped: {t['skipped']}"])
            continue
        data = f"{t['pairs']} pairs" if "pairs" in t else f"{t.get('examples', '-')} examples"
        note = f"best step {t['best_step']}" if "best_step" in t else ""
        if model == "dpo" and isinstance(metrics.get("pairs"), dict):
            p = metrics["pairs"]
            note = (f"{p.get('questions', '-')} questions; chosen from the teacher: "
                    f"{p.get('chosen_from_teacher', '-')}")  # fmt: skip
        rows.append([model, data, str(t.get("steps", "-")), note])
    return _table(["stage", "data", "steps", "note"], rows) if rows else ""


def sft_table(history: list[dict]) -> str:
    """Stage 1's validation checks: step, training loss, validation accuracy and loss."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    rows = [
        [str(h["step"]), num(h.get("train_loss")), _pct(h["accuracy"]), num(h.get("loss"))]
        for h in history
    ]
    return _table(["step", "train loss", "validation accuracy (%)", "validation loss"], rows)


DPO_KEYS = ("loss", "reward_accuracy", "margin", "chosen_logp_change", "rejected_logp_change")


def dpo_table(history: list[dict]) -> str:
    """The first and the last DPO step, and the mean of the last ten (one row per step when
    there are no more than two)."""
    ends = history if len(history) <= 2 else [history[0], history[-1]]
    rows = [[f"step {h['step']}", *(f"{h[k]:.4g}" for k in DPO_KEYS)] for h in ends]
    if len(history) > 2:
        last = history[-10:]
        mean = [f"{sum(h[k] for h in last) / len(last):.4g}" for k in DPO_KEYS]
        rows.append([f"mean of the last {len(last)}", *mean])
    return _table(["", *DPO_KEYS], rows)


def sampling_table(s: dict) -> str:
    """The sampler's statistics (stages/sample.py's ``sample_stats``), shares in %."""
    pct = {"pass@k", "path_accuracy"}
    keys = ["k", "questions", "paths", "pass@k", "path_accuracy", "all_correct", "none_correct",
            "mean_tokens"]  # fmt: skip
    head = [f"{k} (%)" if k in pct else k for k in keys]
    cells = [_pct(s[k]) if k in pct and k in s else str(s.get(k, "-")) for k in keys]
    return _table(head, [cells])


def pass_at(rows: list[dict], k: int) -> list[tuple[int, float]]:
    """(j, pass@j) for j = 1..k: the unbiased estimate from each question's n paths and c
    correct ones, 1 - C(n-c, j) / C(n, j), averaged over the questions (Chen et al., 2021)."""
    per_q: dict[str, list[bool]] = {}
    for r in rows:
        per_q.setdefault(r["id"], []).append(bool(r["correct"]))
    out = []
    for j in range(1, k + 1):
        vals = [
            1 - comb(len(v) - sum(v), j) / comb(len(v), j) for v in per_q.values() if len(v) >= j
        ]
        if vals:
            out.append((j, sum(vals) / len(vals)))
    return out


def report_markdown(metrics: dict, recipe: SRITRecipe, files: dict[str, Any]) -> str:
    """The run's report, from metrics.json's content and ``files`` (the histories and pass@j
    read from the run directory; a key is absent where the run has no such file)."""
    splits, s = list(recipe.eval.splits), recipe.sampling
    parts = [
        f"# {recipe.name}: self-refine instruction-tuning (SRIT)\n",
        f"Student `{recipe.student.model}` on task `{recipe.task.name}`; teacher "
        f"`{recipe.teacher.kind}` on {recipe.teacher.n_questions} questions. Stage 2 samples "
        f"k={s.k} paths/question at T={s.temperature} on {s.n_questions} questions; pairs "
        f"policy `{recipe.pairs.policy}`; RFT {'on' if recipe.rft.enabled else 'off'}; DPO "
        f"{'on' if recipe.dpo.enabled else 'off'} ({recipe.dpo.loss} loss, beta "
        f"{recipe.dpo.beta}). Calculator while decoding: {recipe.calculator}.\n",
        "## Accuracy (%, greedy) per model\n",
        "Brackets: the 95% Wilson interval.\n",
        accuracy_table(metrics, splits),
        f"![accuracy per model]({ACCURACY})\n",
    ]
    compare = compare_table(metrics)
    if compare:
        parts += [
            "## Paired comparisons\n",
            "A against B on the questions both answered: the difference in points, its 95% "
            "interval (Bonett-Price) and the exact McNemar p-value; A only / B only: the "
            "questions one model got right and the other wrong.\n",
            compare,
        ]
    training = training_table(metrics)
    if training:
        parts += ["## Training\n", training]
    if files.get("sft"):
        parts += [
            "## SFT validation\n",
            f"Stage 1 checks greedy accuracy on {recipe.sft.val_questions} validation "
            f"questions every {recipe.sft.eval_every} steps and keeps the best checked weights "
            f"(patience {recipe.sft.patience}).\n",
            sft_table(files["sft"]),
            f"![SFT validation]({SFT})\n",
        ]
    if files.get("dpo"):
        parts += [
            "## DPO\n",
            "Per step: the loss, reward accuracy (share of pairs whose margin is positive), "
            "the margin (beta times the policy's log-ratio over the reference's), and the "
            "change of the chosen and rejected answers' summed log-probabilities from the "
            "reference (a falling chosen one is the known failure of DPO).\n",
            dpo_table(files["dpo"]),
            f"![DPO training]({DPO})\n",
        ]
    if isinstance(metrics.get("samples"), dict) and "pass@k" in metrics["samples"]:
        parts += [
            "## Sampling\n",
            "The stage-1 model's sampled paths on training questions, judged by the ground "
            "truth. pass@k: share of questions with at least one correct path.\n",
            sampling_table(metrics["samples"]),
        ]
        if files.get("pass"):
            parts.append(f"![pass@j]({PASS})\n")
    secs = metrics.get("stage_seconds", {})
    if secs:
        parts.append(f"Total stage time: {sum(secs.values()) / 60:.1f} min.\n")
    return "\n".join(parts)


def read_files(run_dir: Path, metrics: dict) -> dict[str, Any]:
    """The SFT and DPO histories and the samples' pass@j, where the run has them."""
    out: dict[str, Any] = {}
    for key, rel in (("sft", "sft/history.json"), ("dpo", "dpo/history.json")):
        if (run_dir / rel).is_file():
            out[key] = read_json(run_dir / rel)
    samples = metrics.get("samples")
    if isinstance(samples, dict) and "k" in samples and (run_dir / "samples.jsonl").is_file():
        rows = [r for r in read_jsonl(run_dir / "samples.jsonl") if r.get("style") == "cot"]
        out["pass"] = pass_at(rows, samples["k"])
    return out


def write_files(run_dir: Path, recipe: SRITRecipe, metrics: dict) -> list[Path]:
    """report.md and its plots in ``run_dir``; returns their paths."""
    files = read_files(run_dir, metrics)
    splits = list(recipe.eval.splits)
    written = [run_dir / ACCURACY]
    with panels(run_dir / ACCURACY, 1, width=max(4.0, 2.0 * len(splits) + 2)) as (ax,):
        series = {
            m: [_interval(metrics[m].get(s)) for s in splits] for m in models(metrics, splits)
        }
        interval_bars(ax, splits, series, "accuracy (greedy), 95% intervals", "accuracy (%)", 100)
    if files.get("sft"):
        written.append(run_dir / SFT)
        h = files["sft"]
        with panels(run_dir / SFT, 2) as (acc, loss):
            lines(acc, {"validation": [(e["step"], 100 * e["accuracy"]) for e in h]},
                  "SFT validation accuracy", "step", "accuracy (%)", integer_x=True)  # fmt: skip
            losses = {"train": [(e["step"], e["train_loss"]) for e in h if "train_loss" in e],
                      "validation": [(e["step"], e["loss"]) for e in h if "loss" in e]}  # fmt: skip
            lines(loss, losses, "SFT loss", "step", "loss per token", integer_x=True)
    if files.get("dpo"):
        written.append(run_dir / DPO)
        h = files["dpo"]

        def of(key: str) -> list[tuple[float, float]]:
            return [(e["step"], e[key]) for e in h]

        with panels(run_dir / DPO, 3) as (loss, margin, drift):
            lines(loss, {"loss": of("loss")}, "DPO loss", "step", "loss", integer_x=True)
            lines(margin, {"margin": of("margin"), "reward accuracy": of("reward_accuracy")},
                  "margin and reward accuracy", "step", "", integer_x=True)  # fmt: skip
            lines(drift, {"chosen": of("chosen_logp_change"),
                          "rejected": of("rejected_logp_change")},
                  "log-prob change from the reference", "step", "nats", integer_x=True)  # fmt: skip
    if files.get("pass"):
        written.append(run_dir / PASS)
        with panels(run_dir / PASS, 1) as (ax,):
            pts = [(j, 100 * p) for j, p in files["pass"]]
            lines(ax, {"pass@j": pts}, "sampled paths: pass@j", "j", "questions solved (%)",
                  integer_x=True)  # fmt: skip
    report = run_dir / "report.md"
    write_text_atomic(report, report_markdown(metrics, recipe, files))
    return [report, *written]


def _interval(r: dict | None) -> tuple[float, float, float] | None:
    """An evaluation's accuracy and interval in %, None where there is none."""
    if not isinstance(r, dict) or "accuracy" not in r:
        return None
    lo, hi = r.get("ci95", (r["accuracy"], r["accuracy"]))
    return (100 * r["accuracy"], 100 * lo, 100 * hi)
