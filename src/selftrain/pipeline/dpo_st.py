"""DPO-augmented self-training (Wang, Li & Lu, ACL 2024) and the self-training (RFT) baseline.

Stages, each named in the run directory's state.json so a stopped run resumes at the round and
stage where it stopped:

  data -> warmup.sft (gold rationales, from the base model) -> warmup.eval
  per arm, per round r:
    dpo_st:         ARM.rR.dpo_samples (the SFT model, k paths/question) -> ARM.rR.pairs
                    -> ARM.rR.dpo (reference: that SFT model) -> ARM.rR.sft_samples (the DPO
                    model) -> ARM.rR.sft_data -> ARM.rR.sft (from the base) -> ARM.rR.eval
    self_training:  ARM.rR.sft_samples (the SFT model itself) -> ARM.rR.sft_data -> ARM.rR.sft
                    -> ARM.rR.eval
  calculator.MODEL (the warm-up and each arm's final model decoded with the calculator
  switched the other way) -> report.md, accuracy_by_round.png.

Every arm starts from the same warm-up checkpoint, which is trained once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selftrain import tasks
from selftrain.config import DPOSTConfig, Recipe
from selftrain.eval.generative import evaluate
from selftrain.io import read_jsonl, write_jsonl_atomic, write_text_atomic
from selftrain.models import Student
from selftrain.pipeline.dpo_st_report import (
    calculator_table,
    plot_accuracy,
    report_markdown,
    round_table,
)
from selftrain.pipeline.rundir import RunDir
from selftrain.preference import dpo_st_pairs, pseudo_label_pools
from selftrain.progress import console, log, setup_logging
from selftrain.runtime import Runtime
from selftrain.sampling import Engine, SamplingParams, generate, make_engine
from selftrain.tasks.base import Example, Task
from selftrain.training.dpo import reference_logps, train_dpo
from selftrain.training.sft import train_sft

WARMUP = "warmup"


@dataclass
class EvalSet:
    """A column of the results: a label, the task that judges it and its questions."""

    label: str
    task: Task
    examples: list[Example]


@dataclass
class _Run:
    rd: RunDir
    recipe: Recipe
    cfg: DPOSTConfig
    task: Task
    student: Student
    engine: Engine  # decodes every sampling and evaluation stage
    base: dict[str, torch.Tensor]  # the base model's trainable weights (on the CPU)
    train: list[Example]
    evals: list[EvalSet]
    gold: dict[str, str]
    _prompts: dict[str, list[int]] = field(default_factory=dict)
    _token_sets: dict[str, frozenset[int]] = field(default_factory=dict)

    def prompt_ids(self, e: Example) -> list[int]:
        if e.id not in self._prompts:
            self._prompts[e.id] = self.student.prompt_ids(self.task.prompt(e))
        return self._prompts[e.id]

    def tokens(self, text: str) -> frozenset[int]:
        """The student tokenizer's token set of a text (the paper's similarity tokens)."""
        if text not in self._token_sets:
            ids = self.student.tokenizer(text, add_special_tokens=False).input_ids
            self._token_sets[text] = frozenset(ids)
        return self._token_sets[text]


def arms(recipe: Recipe) -> list[str]:
    """The arms a recipe runs: its method first, then its baselines."""
    assert recipe.dpo_st is not None
    out = [recipe.method]
    out += [b for b in recipe.dpo_st.baselines if b not in out]
    return out


def run(recipe: Recipe, run_dir: str | Path) -> dict:
    """Run (or resume) DPO-ST / self-training in ``run_dir``; return metrics.json's content."""
    if recipe.dpo_st is None or recipe.method == "srit":
        raise ValueError("dpo_st.run needs a recipe with method dpo_st or self_training")
    runtime = Runtime.start(recipe.student.device)
    rd = RunDir(run_dir, recipe, runtime)
    main = runtime.is_main
    setup_logging(rd / "log.txt" if main else None, quiet=not main)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    task = tasks.get(recipe.task.name, **recipe.task.args)
    train, evals = _data(rd, task, recipe)
    # after the seed: LoRA's initial weights are fixed
    student = Student.load(recipe.student, runtime)
    run = _Run(
        rd=rd,
        recipe=recipe,
        cfg=recipe.dpo_st,
        task=task,
        student=student,
        engine=make_engine(recipe.sampling.engine, recipe.sampling.vllm, runtime, rd / "vllm"),
        base=student.snapshot(),
        train=train,
        evals=evals,
        gold={e.id: _gold(task, e) for e in train[: recipe.dpo_st.gold_questions]},
    )
    if main:
        log.info(
            "DPO-ST: arms %s, %d rounds, %d training questions (%d with a gold rationale); "
            "%s; decoding with %s",
            arms(recipe),
            run.cfg.rounds,
            len(train),
            len(run.gold),
            runtime.describe(),
            run.engine.name,
        )
    try:
        _stages(run)
    finally:
        run.engine.close()
    if main:
        _report(run, evals)
    return rd.metrics


def _stages(run: _Run) -> None:
    """The warm-up, every arm's rounds and the calculator ablation, in order."""
    rd, recipe = run.rd, run.recipe
    warm = rd / WARMUP / "model"
    if not rd.done("warmup.sft"):
        with rd.stage("warmup.sft"):
            rows = [{"id": q, "text": t} for q, t in run.gold.items()]
            stats = _train_sft(
                run,
                rows,
                init=None,
                out=warm,
                label="warm-up sft",
                epochs=run.cfg.sft.warmup_epochs or run.cfg.sft.epochs,
            )
            _put(rd, (WARMUP, "training"), stats)
    _evaluate(run, WARMUP, warm, ("warmup", "eval"), "warmup.eval")

    for arm in arms(recipe):
        sft_model = warm
        for r in range(1, run.cfg.rounds + 1):
            sft_model = _round(run, arm, r, sft_model)

    if run.cfg.calculator_ablation:
        finals = {WARMUP: warm}
        finals |= {
            f"{arm}.r{run.cfg.rounds}": _round_dir(rd, arm, run.cfg.rounds) / "sft" / "model"
            for arm in arms(recipe)
        }
        for name, weights in finals.items():
            _calculator_ablation(run, name, weights)


def _report(run: _Run, evals: list[EvalSet]) -> None:
    """report.md, accuracy_by_round.png and the tables on the console (rank 0)."""
    rd, recipe = run.rd, run.recipe
    report = report_markdown(rd.metrics, recipe, arms(recipe), [s.label for s in evals])
    write_text_atomic(rd / "report.md", report)
    plot_accuracy(rd.metrics, arms(recipe), [s.label for s in evals], rd / "accuracy_by_round.png")
    labels = [s.label for s in evals]
    console.print("accuracy (%, greedy) by round; round 0 is the shared warm-up")
    console.print(round_table(rd.metrics, arms(recipe), labels), markup=False, soft_wrap=True)
    calc = calculator_table(rd.metrics, labels)
    if calc:
        console.print("the calculator's effect (accuracy %, with / without)")
        console.print(calc, markup=False, soft_wrap=True)
    console.print(f"report: {rd / 'report.md'}; stage seconds: {rd.state['seconds']}")


# ---- one round ---------------------------------------------------------------------------------
def _round(run: _Run, arm: str, r: int, sft_model: Path) -> Path:
    """Round ``r`` of ``arm`` starting from ``sft_model``; returns the round's SFT model."""
    rd, cfg = run.rd, run.cfg
    folder = _round_dir(rd, arm, r)
    prefix = f"{arm}.r{r}"
    mkey = (arm, "rounds", str(r))
    sampler = sft_model  # self-training: the SFT model writes its own pseudo-labels
    if arm == "dpo_st":
        samples = folder / "dpo_samples.jsonl"
        if not rd.done(f"{prefix}.dpo_samples"):
            with rd.stage(f"{prefix}.dpo_samples"):
                stats = _sample(run, samples, sft_model, cfg.k, _seed(run, arm, r, 1), prefix)
                _put(rd, (*mkey, "dpo_samples"), stats)
        pairs_path = folder / "pairs.jsonl"
        if not rd.done(f"{prefix}.pairs"):
            with rd.stage(f"{prefix}.pairs"):
                if rd.runtime.is_main:
                    _make_pairs(run, arm, r, pairs_path, mkey)
        pairs = read_jsonl(pairs_path)
        dpo_model = folder / "dpo" / "model"
        if not pairs:
            log.warning("%s: no preference pairs; the DPO step is skipped", prefix)
            if not rd.done(f"{prefix}.dpo"):
                with rd.stage(f"{prefix}.dpo"):
                    _put(rd, (*mkey, "dpo_training"), {"skipped": "no preference pairs"})
        else:
            if not rd.done(f"{prefix}.dpo"):
                with rd.stage(f"{prefix}.dpo"):
                    _put(
                        rd,
                        (*mkey, "dpo_training"),
                        _train_dpo(run, pairs, sft_model, dpo_model, prefix),
                    )
            sampler = dpo_model
            if cfg.eval_dpo_model:
                _evaluate(
                    run, f"{prefix}.dpo", dpo_model, (*mkey, "eval_dpo"), f"{prefix}.eval_dpo"
                )

    sft_samples = folder / "sft_samples.jsonl"
    if not rd.done(f"{prefix}.sft_samples"):
        with rd.stage(f"{prefix}.sft_samples"):
            stats = _sample(run, sft_samples, sampler, cfg.sft_k, _seed(run, arm, r, 2), prefix)
            _put(rd, (*mkey, "sft_samples"), stats)
    sft_data = folder / "sft_data.jsonl"
    if not rd.done(f"{prefix}.sft_data"):
        with rd.stage(f"{prefix}.sft_data"):
            if rd.runtime.is_main:
                _make_sft_data(run, arm, r, sft_data, mkey)
    new_sft = folder / "sft" / "model"
    if not rd.done(f"{prefix}.sft"):
        with rd.stage(f"{prefix}.sft"):
            init = None if cfg.sft_init == "base" else sft_model
            stats = _train_sft(
                run,
                read_jsonl(sft_data),
                init=init,
                out=new_sft,
                label=f"{prefix} sft",
                epochs=cfg.sft.epochs,
            )
            _put(rd, (*mkey, "sft_training"), stats)
    _evaluate(run, prefix, new_sft, (*mkey, "eval"), f"{prefix}.eval")
    return new_sft


def _make_pairs(run: _Run, arm: str, r: int, path: Path, mkey: tuple[str, ...]) -> None:
    """DPO-ST's pairs from this round's samples and every earlier round's (rank 0)."""
    rd, cfg = run.rd, run.cfg
    pools: dict[str, list[dict]] = {}
    for earlier in range(1, r + 1):  # this round's samples and every earlier one's
        for row in read_jsonl(_round_dir(rd, arm, earlier) / "dpo_samples.jsonl"):
            pools.setdefault(row["id"], []).append(row)
    pairs = dpo_st_pairs(
        pools,
        run.gold,
        m=cfg.pairs_per_question,
        threshold=cfg.similarity_threshold,
        tokens=run.tokens,
        seed=run.recipe.seed + r,
    )
    write_jsonl_atomic(path, pairs)
    _put(
        rd,
        (*mkey, "pairs"),
        {
            "pairs": len(pairs),
            "questions": len({p["id"] for p in pairs}),
            "questions_skipped": len(run.train) - len({p["id"] for p in pairs}),
            "chosen_gold": sum(p["chosen_from"] == "gold" for p in pairs),
        },
    )


def _make_sft_data(run: _Run, arm: str, r: int, path: Path, mkey: tuple[str, ...]) -> None:
    """Gold rationales plus the correct, deduplicated self-samples of rounds 1..r (rank 0)."""
    rd, cfg = run.rd, run.cfg
    correct: dict[str, list[str]] = {}
    for earlier in range(1, r + 1):
        for row in read_jsonl(_round_dir(rd, arm, earlier) / "sft_samples.jsonl"):
            if row["correct"]:
                correct.setdefault(row["id"], []).append(row["text"])
    pools, cap = pseudo_label_pools(
        correct,
        run.gold,
        threshold=cfg.similarity_threshold,
        tokens=run.tokens,
        cap=cfg.pseudo_label_cap,
        percentile=cfg.cap_percentile,
    )
    rows = [
        {"id": q, "text": t, "gold": t == run.gold.get(q)} for q, ts in pools.items() for t in ts
    ]
    write_jsonl_atomic(path, rows)
    pseudo = [x for x in rows if not x["gold"]]
    _put(
        rd,
        (*mkey, "pseudo_labels"),
        {
            "examples": len(rows),
            "pseudo_labels": len(pseudo),
            "questions_with_pseudo_labels": len({x["id"] for x in pseudo}),
            # answer-only questions (no gold rationale) that now have an SFT example
            "answer_only_covered": len({x["id"] for x in pseudo} - set(run.gold)),
            "answer_only_questions": len(run.train) - len(run.gold),
            "cap": cap,
        },
    )


def _round_dir(rd: RunDir, arm: str, r: int) -> Path:
    return rd / arm / f"r{r}"


def _seed(run: _Run, arm: str, r: int, which: int) -> int:
    return run.recipe.seed * 10_000 + (0 if arm == "dpo_st" else 5_000) + 10 * r + which


# ---- pieces ------------------------------------------------------------------------------------
def _data(rd: RunDir, task: Task, recipe: Recipe) -> tuple[list[Example], list[EvalSet]]:
    """Write the training questions and every evaluation set to data/, once; later stages and
    resumes read them from there."""
    cfg = recipe.dpo_st
    assert cfg is not None
    have = set(task.splits())
    wanted = [s for s in recipe.eval.splits if s != "dev"]
    missing = sorted(set(wanted) - have) + (
        ["dev (dpo_st.dev_holdout is 0)"]
        if "dev" in recipe.eval.splits and cfg.dev_holdout == 0
        else []
    )
    if missing or "train" not in have:
        raise ValueError(
            f"task '{recipe.task.name}' has no split(s) {missing or ['train']}; it has "
            f"{sorted(have)} (recipe key eval.splits)"
        )
    labels = [t.label or t.name for t in cfg.eval_tasks]
    if len(set(labels) | set(recipe.eval.splits)) < len(labels) + len(recipe.eval.splits):
        raise ValueError(
            "dpo_st.eval_tasks: every label must differ from the others and from "
            "eval.splits (set 'label')"
        )
    extra = [tasks.get(t.name, **t.args) for t in cfg.eval_tasks]
    data = rd / "data"
    if not rd.done("data"):
        with rd.stage("data"):
            if rd.runtime.is_main:
                if cfg.dev_holdout:
                    pool = task.load("train")
                    if len(pool) <= cfg.dev_holdout:
                        raise ValueError(
                            f"dpo_st.dev_holdout {cfg.dev_holdout} leaves no training questions "
                            f"(train has {len(pool)})"
                        )
                    dev = pool[len(pool) - cfg.dev_holdout :][: cfg.limit]
                    train = pool[: len(pool) - cfg.dev_holdout][: _cap(cfg.n_questions, cfg.limit)]
                    write_jsonl_atomic(data / "dev.jsonl", (e.to_dict() for e in dev))
                else:
                    train = task.load("train", _cap(cfg.n_questions, cfg.limit))
                write_jsonl_atomic(data / "train.jsonl", (e.to_dict() for e in train))
                for split in wanted:
                    n = _cap(recipe.eval.n_per_split.get(split, recipe.eval.n), cfg.limit)
                    write_jsonl_atomic(
                        data / f"{split}.jsonl", (e.to_dict() for e in task.load(split, n))
                    )
                for t, label, other in zip(cfg.eval_tasks, labels, extra, strict=True):
                    rows = other.load(t.split, _cap(t.n, cfg.limit))
                    write_jsonl_atomic(
                        data / "tasks" / f"{label}.jsonl", (e.to_dict() for e in rows)
                    )

    def read(path: Path) -> list[Example]:
        return [Example.from_dict(d) for d in read_jsonl(path)]

    train = read(data / "train.jsonl")
    evals = []
    for split in recipe.eval.splits:
        examples = read(data / f"{split}.jsonl")
        if split == "dev":
            examples = examples[: recipe.eval.n_per_split.get("dev", recipe.eval.n)]
        evals.append(EvalSet(split, task, examples))
    evals += [
        EvalSet(label, other, read(data / "tasks" / f"{label}.jsonl"))
        for label, other in zip(labels, extra, strict=True)
    ]
    return train, evals


def _cap(n: int | None, limit: int | None) -> int | None:
    return n if limit is None else limit if n is None else min(n, limit)


def _gold(task: Task, e: Example) -> str:
    """The gold rationale of a training question (the task's solver when it has none)."""
    if e.rationale:
        return e.rationale
    demonstrate = getattr(task, "demonstration", None)
    if demonstrate is None:
        raise ValueError(f"{e.id}: no gold rationale, and task '{task.name}' has no solver")
    return demonstrate(e)


def _sample(run: _Run, path: Path, weights: Path, k: int, seed: int, label: str) -> dict[str, Any]:
    """``k`` paths per training question from ``weights`` at the recipe's temperature, each
    judged against the ground truth; appended per batch and resumed per question (a path's
    draws depend on the seed, its question and its index only). Several processes each
    sample every ``world``-th question left; rank 0 writes every record."""
    student, cfg, runtime = run.student, run.cfg, run.rd.runtime
    student.load_weights(weights)
    rows = read_jsonl(path)
    count = Counter(r["id"] for r in rows)
    complete = [r for r in rows if count[r["id"]] == k]
    if len(complete) < len(rows) and runtime.is_main:  # killed mid-batch: redo those whole
        write_jsonl_atomic(path, complete)
    have = {r["id"] for r in complete}
    todo = [e for e in run.train if e.id not in have]
    by_id = {e.id: e for e in run.train}
    params = SamplingParams(
        k=k,
        greedy=False,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.sampling_batch_size,
        seed=seed,
        calculator=run.recipe.calculator,
    )
    items = [(e.id, run.prompt_ids(e)) for e in runtime.shard(todo)]

    def judged(batch):
        return [
            {
                "id": qid,
                "text": text,
                "correct": run.task.is_correct(text, by_id[qid]),
                "tokens": n,
            }
            for qid, texts, lengths in batch
            for text, n in zip(texts, lengths, strict=True)
        ]

    if todo:
        mine = (judged(b) for b in generate(student, items, params, run.engine))
        for _ in runtime.collect(mine, path, f"{label} sample k={k}", len(todo) * k):
            pass
    return sample_stats(read_jsonl(path), k)


def sample_stats(rows: Sequence[dict], k: int) -> dict[str, Any]:
    """The sampler's pass@k (a question with at least one correct path), path accuracy, ..."""
    per_q: dict[str, list[bool]] = {}
    for r in rows:
        per_q.setdefault(r["id"], []).append(r["correct"])
    n = max(1, len(per_q))
    return {
        "k": k,
        "questions": len(per_q),
        "paths": len(rows),
        "pass@k": round(sum(any(v) for v in per_q.values()) / n, 4),
        "path_accuracy": round(sum(r["correct"] for r in rows) / max(1, len(rows)), 4),
        "questions_with_a_wrong_path": sum(not all(v) for v in per_q.values()),
        "mean_tokens": round(sum(r["tokens"] for r in rows) / max(1, len(rows)), 1),
    }


def _train_sft(
    run: _Run, rows: Sequence[dict], *, init: Path | None, out: Path, label: str, epochs: int
) -> dict[str, Any]:
    """SFT on (question id, rationale) rows from the base model (``init`` None) or ``init``."""
    student, c = run.student, run.cfg.sft
    if init is None:
        student.restore(run.base)
    else:
        student.load_weights(init)
    train = {e.id: e for e in run.train}
    data = [(run.prompt_ids(train[x["id"]]), student.completion_ids(x["text"])) for x in rows]
    res = train_sft(
        student,
        data,
        lr=c.lr,
        batch_size=c.batch_size,
        micro_batch_size=c.micro_batch_size,
        epochs=epochs,
        max_steps=min(c.max_steps, epochs * -(-len(data) // c.batch_size)) if c.max_steps else None,
        weight_decay=c.weight_decay,
        warmup_ratio=c.warmup_ratio,
        grad_clip=c.grad_clip,
        seed=run.recipe.seed,
        label=label,
    )
    student.save(out)
    return {
        "examples": len(data),
        "steps": res.steps,
        "from": "base" if init is None else "previous",
    }


def _train_dpo(run: _Run, pairs: Sequence[dict], sft_model: Path, out: Path, label: str) -> dict:
    """DPO from the round's SFT model, which is also the reference."""
    student = run.student
    student.load_weights(sft_model)
    train = {e.id: e for e in run.train}
    tok = [
        (
            run.prompt_ids(train[p["id"]]),
            student.completion_ids(p["chosen"]),
            student.completion_ids(p["rejected"]),
        )
        for p in pairs
    ]
    ref = reference_logps(student, tok)
    res = train_dpo(student, tok, run.cfg.dpo, seed=run.recipe.seed, ref=ref, label=f"{label} dpo")
    student.save(out)
    run.rd.write_json(out.parent.relative_to(run.rd.path) / "history.json", res.history)
    return {"pairs": len(pairs), "steps": res.steps, "last": res.history[-1]}


def _evaluate(
    run: _Run,
    name: str,
    weights: Path,
    key: tuple[str, ...],
    stage: str,
    *,
    calculator: bool | None = None,
    n: int | None = None,
) -> dict:
    """Greedy accuracy of ``weights`` on every evaluation set, per example resumable."""
    rd = run.rd
    if rd.done(stage):
        return _get(rd.metrics, key)
    with rd.stage(stage):
        run.student.load_weights(weights)
        result = {}
        for s in run.evals:
            result[s.label] = evaluate(
                run.student,
                s.task,
                s.examples[:n] if n else s.examples,
                max_new_tokens=run.recipe.eval.max_new_tokens,
                batch_size=run.recipe.eval.batch_size,
                out=rd / "eval" / name / f"{s.label}.jsonl",
                label=f"eval {name} {s.label}",
                calculator=run.recipe.calculator if calculator is None else calculator,
                engine=run.engine,
            )
            if rd.runtime.is_main:
                log.info("%s %s: %s", name, s.label, result[s.label])
        _put(rd, key, result)
    return result


def _calculator_ablation(run: _Run, name: str, weights: Path) -> None:
    """``weights`` decoded with the calculator switched the other way, beside the numbers the
    recipe's own setting gave on the same questions."""
    n = run.cfg.calculator_ablation_n
    other = not run.recipe.calculator
    suffix = "with_calculator" if other else "no_calculator"
    result = _evaluate(
        run,
        f"{name}.{suffix}",
        weights,
        ("calculator_evals", name),
        f"calculator.{name}",
        calculator=other,
        n=n,
    )
    table = {}
    for s in run.evals:
        rows = {r["id"]: r for r in read_jsonl(run.rd / "eval" / name / f"{s.label}.jsonl")}
        ids = [e.id for e in (s.examples[:n] if n else s.examples)]
        same = sum(rows[i]["correct"] for i in ids if i in rows) / max(1, len(ids))
        on, off = (result[s.label]["accuracy"], round(same, 4))
        if run.recipe.calculator:
            on, off = off, on
        table[s.label] = {"with": on, "without": off, "n": len(ids)}
    _put(run.rd, ("calculator", name), table)


def _put(rd: RunDir, key: Sequence[str], value: Any) -> None:
    """Set a nested entry of metrics.json (written atomically)."""
    if len(key) == 1:
        rd.set_metric(key[0], value)
        return
    top = rd.metrics.get(key[0])
    top = top if isinstance(top, dict) else {}
    node = top
    for k in key[1:-1]:
        node = node.setdefault(k, {})
    node[key[-1]] = value
    rd.set_metric(key[0], top)


def _get(metrics: dict, key: Sequence[str]) -> Any:
    node: Any = metrics
    for k in key:
        node = node.get(k, {}) if isinstance(node, dict) else {}
    return node
