"""Self-refine instruction-tuning (Ranaldi & Freitas, 2024), end to end.

Stages, each resumable from the run directory:
  data -> base eval -> demos -> sft (+ eval) -> samples -> pairs -> rft -> dpo (+ eval of the
  last) -> sft_more control (+ eval) -> paired comparisons.
Stage 1 tunes the student on verified teacher demonstrations; stage 2 has it answer training
questions itself and rewards its paths by the ground truth; RFT (``rft.enabled``) trains the
stage-1 model on its correct paths, and DPO runs on (correct, wrong) pairs against the model
it starts from.
"""

from __future__ import annotations

import statistics
from collections import Counter
from pathlib import Path

import torch

from selftrain import tasks
from selftrain.config import Recipe
from selftrain.eval.generative import accuracy_table, correct_by_id, evaluate
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.models import Student
from selftrain.pipeline.rundir import RunDir
from selftrain.preference import correct_vs_wrong, cot_vs_direct, rft_paths, to_first_divergence
from selftrain.progress import console, log, setup_logging
from selftrain.runtime import Runtime
from selftrain.sampling import Engine, SamplingParams, generate, make_engine
from selftrain.stats import compare, describe
from selftrain.tasks.base import Example, Task
from selftrain.teachers import TeacherError, build_teacher, kept_demos, prices_of, run_demos
from selftrain.training.dpo import reference_logps, train_dpo
from selftrain.training.sft import SFTResult, train_sft, validation_loss

MODELS = ("base", "sft", "sft_more", "rft", "dpo")


def run(recipe: Recipe, run_dir: str | Path) -> dict:
    """Run (or resume) the SRIT recipe in ``run_dir``; return metrics.json's content. Under
    ``accelerate launch`` every process runs this, and rank 0 writes the run directory."""
    runtime = Runtime.start(recipe.student.device)
    rd = RunDir(run_dir, recipe, runtime)
    main = runtime.is_main
    setup_logging(rd / "log.txt" if main else None, quiet=not main)
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    torch.manual_seed(recipe.seed)
    task = tasks.get(recipe.task.name, **recipe.task.args)
    splits = _data(rd, task, recipe)
    if len(splits["train"]) <= recipe.sampling.offset:
        raise ValueError(
            f"no training questions to sample: the train split has {len(splits['train'])} "
            f"and sampling.offset is {recipe.sampling.offset} (recipe key sampling.offset)"
        )
    student = Student.load(recipe.student, runtime)
    engine = make_engine(recipe.sampling.engine, recipe.sampling.vllm, runtime, rd / "vllm")
    if main:
        log.info(
            "student %s: %.1fM parameters, %.2fM trainable; %s; decoding with %s",
            recipe.student.model,
            sum(p.numel() for p in student.model.parameters()) / 1e6,
            sum(p.numel() for p in student.trainable_parameters()) / 1e6,
            runtime.describe(),
            engine.name,
        )
    try:
        _stages(rd, recipe, task, splits, student, engine)
    finally:
        engine.close()
    if main:
        console.print(accuracy_table(rd.metrics, MODELS, recipe.eval.splits))
        for name, by_split in rd.metrics.get("compare", {}).items():
            cells = "; ".join(f"{s} {describe(c)}" for s, c in by_split.items())
            console.print(f"{name}: {cells}")
        console.print(f"stage seconds: {rd.state['seconds']}")
        console.print(f"metrics: {rd / 'metrics.json'}")
    return rd.metrics


def _stages(
    rd: RunDir, recipe: Recipe, task: Task, splits: dict, student: Student, engine: Engine
) -> None:
    """The recipe's stages in order, each skipped when the run directory marks it done."""
    if recipe.eval.evaluate_base:
        _evaluate_stage(rd, "base", student, task, splits, recipe, engine, n=recipe.eval.base_n)

    demos = _demos(rd, task, splits["train"], recipe)
    sft_data = [
        (student.prompt_ids(task.prompt(e)), student.completion_ids(text))
        for e, text in _demo_examples(splits["train"], demos)
    ]

    if not rd.done("sft"):
        with rd.stage("sft"):
            res = _train_sft(rd, student, task, splits, recipe, engine, sft_data)
            student.save(rd / "sft" / "model")
            rd.write_json("sft/history.json", res.history)
            rd.set_metric(
                "sft_training",
                {"steps": res.steps, "best_step": res.best_step, "examples": len(sft_data)},
            )
    sft = rd / "sft" / "model"
    _evaluate_stage(rd, "sft", student, task, splits, recipe, engine, weights=sft)

    samples = _samples(rd, student, task, splits["train"], recipe, engine)
    pairs = _pairs(rd, samples, {qid: texts[0] for qid, texts in demos.items()}, recipe)

    start, steps = sft, 0  # the weights stage 2's next step starts from; its steps so far
    final = None
    if recipe.rft.enabled:
        rft = _rft_stage(rd, student, task, splits, samples, demos, recipe, sft)
        if rft is not None:
            (start, steps), final = rft, "rft"
    if recipe.dpo.enabled and not pairs:
        msg = (
            "no preference pairs: every sampled path was right, or every one wrong with no "
            "teacher fallback; DPO is skipped"
        )
        log.warning(msg)
        rd.set_metric("dpo", {"skipped": msg})
    elif recipe.dpo.enabled:
        steps += _dpo_stage(rd, student, task, splits, pairs, recipe, start)
        final = "dpo"
    if final is None:
        return
    _evaluate_stage(rd, final, student, task, splits, recipe, engine, weights=rd / final / "model")

    if recipe.sft_more:
        if not rd.done("sft_more_train"):
            with rd.stage("sft_more_train"):
                student.load_weights(sft)
                train_sft(
                    student,
                    sft_data,
                    **_optimizer(recipe.sft),
                    max_steps=steps,
                    seed=recipe.seed + 1,
                    label="sft_more",
                )
                student.save(rd / "sft_more" / "model")
                rd.set_metric("sft_more_training", {"steps": steps})
        more = rd / "sft_more" / "model"
        _evaluate_stage(
            rd,
            "sft_more",
            student,
            task,
            splits,
            recipe,
            engine,
            n=recipe.eval.control_n,
            weights=more,
        )
    _compare_stage(rd, final, recipe)


def _rft_stage(
    rd, student, task, splits, samples, demos, recipe: Recipe, sft: Path
) -> tuple[Path, int] | None:
    """Rejection-sampling fine-tuning from the stage-1 model on its own correct, distinct
    paths (and the demonstrations with ``rft.with_demos``); returns (its weights, its steps),
    or None when there was nothing to train on."""
    c = recipe.rft
    path = rd / "rft.jsonl"
    if not rd.done("rft_data"):
        with rd.stage("rft_data"):
            kept = rft_paths(
                samples["cot"],
                per_question=c.paths_per_question,
                per_easy_question=c.paths_per_easy_question,
                seed=recipe.seed,
            )
            if rd.runtime.is_main:
                write_jsonl_atomic(path, kept)
    kept = read_jsonl(path)
    if not rd.done("rft"):
        with rd.stage("rft"):
            train = {e.id: e for e in splits["train"]}
            data = [(train[r["id"]], r["text"]) for r in kept]
            if c.with_demos:
                data += _demo_examples(splits["train"], demos)
            if not data:
                msg = (
                    "no RFT data: the student answered no sampled question correctly (raise "
                    "sampling.k or sampling.n_questions, or set rft.with_demos: true); RFT is "
                    "skipped"
                )
                log.warning(msg)
                rd.set_metric("rft_training", {"skipped": msg})
                return
            tokens = [
                (student.prompt_ids(task.prompt(e)), student.completion_ids(t)) for e, t in data
            ]
            student.load_weights(sft)
            res = train_sft(
                student,
                tokens,
                **_optimizer(c),
                epochs=c.epochs,
                seed=recipe.seed + 2,
                label="rft",
            )
            student.save(rd / "rft" / "model")
            rd.set_metric(
                "rft_training",
                {
                    "steps": res.steps,
                    "examples": len(tokens),
                    "self_paths": len(kept),
                    "questions": len({r["id"] for r in kept}),
                    "easy_questions": len({r["id"] for r in kept if r["easy"]}),
                },
            )
    if "skipped" in rd.metrics["rft_training"]:
        return None
    return rd / "rft" / "model", rd.metrics["rft_training"]["steps"]


def _dpo_stage(rd, student, task, splits, pairs, recipe: Recipe, start: Path) -> int:
    """DPO from ``start`` (the stage-1 or RFT model), which is also its reference; returns its
    optimizer steps."""
    if not rd.done("dpo"):
        with rd.stage("dpo"):
            student.load_weights(start)
            train = {e.id: e for e in splits["train"]}
            tok = [
                (
                    student.prompt_ids(task.prompt(train[p["id"]])),
                    student.completion_ids(p["chosen"]),
                    student.completion_ids(
                        p["rejected"], eos=not p.get("rejected_truncated", False)
                    ),
                )
                for p in pairs
            ]
            ref = reference_logps(student, tok)
            res = train_dpo(student, tok, recipe.dpo, seed=recipe.seed, ref=ref)
            student.save(rd / "dpo" / "model")
            rd.write_json("dpo/history.json", res.history)
            rd.set_metric(
                "dpo_training", {"steps": res.steps, "pairs": len(pairs), "last": res.history[-1]}
            )
    return rd.metrics["dpo_training"]["steps"]


def _compare_stage(rd: RunDir, final: str, recipe: Recipe) -> None:
    """Paired comparisons of the self-refined student with sft and sft_more (and of sft_more
    with sft) on the questions both answered: metrics.json's ``compare``."""
    out = {}
    models = [m for m in ("sft", "sft_more") if rd.done(f"eval_{m}")]
    versus = [(final, m) for m in models] + ([("sft_more", "sft")] if len(models) == 2 else [])
    for a, b in versus:
        out[f"{a}_vs_{b}"] = {
            split: compare(
                correct_by_id(rd / "eval" / a / f"{split}.jsonl"),
                correct_by_id(rd / "eval" / b / f"{split}.jsonl"),
            )
            for split in recipe.eval.splits
        }
    rd.set_metric("compare", out)


def _train_sft(rd, student, task, splits, recipe: Recipe, engine: Engine, sft_data) -> SFTResult:
    """Stage 1: SFT on the kept demonstrations, stopped when validation accuracy stalls."""
    val = splits["validation"][: recipe.sft.val_questions]
    val_data = [
        (student.prompt_ids(task.prompt(e)), student.completion_ids(e.rationale))
        for e in val
        if e.rationale
    ]

    def validate() -> dict:
        acc = evaluate(
            student,
            task,
            val,
            max_new_tokens=recipe.sft.max_new_tokens,
            batch_size=recipe.eval.batch_size,
            label="sft validation",
            calculator=recipe.calculator,
            engine=engine,
        )
        out = {"accuracy": acc["accuracy"]}
        if val_data:
            out["loss"] = round(validation_loss(student, val_data), 4)
        return out

    c = recipe.sft
    return train_sft(
        student,
        sft_data,
        **_optimizer(c),
        epochs=c.max_epochs,
        seed=recipe.seed,
        validate=validate,
        eval_every=c.eval_every,
        patience=c.patience,
    )


def _optimizer(c) -> dict:
    """The optimizer settings ``train_sft`` takes from an SFT-like config (sft, rft)."""
    keys = ("lr", "batch_size", "micro_batch_size", "weight_decay", "warmup_ratio", "grad_clip")
    return {k: getattr(c, k) for k in keys}


# ---- stages ----------------------------------------------------------------------------------
def _data(rd: RunDir, task: Task, recipe: Recipe) -> dict[str, list[Example]]:
    """Write the splits the run uses to data/, once; later stages and resumes read them."""
    needed = {"train", "validation", *recipe.eval.splits}
    missing = needed - set(task.splits())
    if missing:
        raise ValueError(
            f"task '{recipe.task.name}' has no split(s) {sorted(missing)}; "
            f"it has {task.splits()} (recipe key eval.splits)"
        )
    if not rd.done("data"):
        with rd.stage("data"):
            n_train = max(
                recipe.teacher.n_questions, recipe.sampling.offset + recipe.sampling.n_questions
            )
            for split in sorted(needed) if rd.runtime.is_main else []:
                n = {"train": n_train, "validation": recipe.sft.val_questions}.get(
                    split, recipe.eval.n_per_split.get(split, recipe.eval.n)
                )
                examples = task.load(split, n)
                if len(examples) < n:
                    log.warning(
                        "split %s has %d questions, fewer than the %d asked for (recipe key "
                        "eval.n, or the task's size, e.g. task.args.n_test)",
                        split,
                        len(examples),
                        n,
                    )
                write_jsonl_atomic(rd / "data" / f"{split}.jsonl", (e.to_dict() for e in examples))
    return {
        s: [Example.from_dict(d) for d in read_jsonl(rd / "data" / f"{s}.jsonl")] for s in needed
    }


def _evaluate_stage(
    rd: RunDir,
    name: str,
    student: Student,
    task: Task,
    splits: dict,
    recipe: Recipe,
    engine: Engine,
    n: int | None = None,
    weights: Path | None = None,
) -> None:
    stage = f"eval_{name}"
    if rd.done(stage):
        return
    with rd.stage(stage):
        if weights is not None:
            student.load_weights(weights)
        result = {}
        for split in recipe.eval.splits:
            examples = splits[split][:n] if n else splits[split]
            result[split] = evaluate(
                student,
                task,
                examples,
                max_new_tokens=recipe.eval.max_new_tokens,
                batch_size=recipe.eval.batch_size,
                out=rd / "eval" / name / f"{split}.jsonl",
                label=f"eval {name} {split}",
                calculator=recipe.calculator,
                engine=engine,
            )
            if rd.runtime.is_main:
                log.info("%s %s: %s", name, split, result[split])
        rd.set_metric(name, result)


def _demos(rd: RunDir, task: Task, train: list[Example], recipe: Recipe) -> dict[str, list[str]]:
    """Teacher demonstrations for the first n training questions (``teacher.n_per_question``
    each), kept when verified; question id -> kept texts. A request that failed after its
    retries leaves the stage undone, so the next run asks for it again."""
    path = rd / "demos.jsonl"
    if not rd.done("demos"):
        with rd.stage("demos"):
            if rd.runtime.is_main:  # the teacher asks once; the other ranks read its answers
                _ask_teacher(rd, task, train, recipe, path)
    return kept_demos(read_jsonl(path))


def _ask_teacher(rd: RunDir, task: Task, train: list[Example], recipe: Recipe, path: Path) -> None:
    """Ask the recipe's teacher and write down its demonstrations (rank 0)."""
    t = recipe.teacher
    stats = run_demos(
        build_teacher(t, task, seed=recipe.seed),
        task,
        train[: t.n_questions],
        path,
        n_per_question=t.n_per_question,
        system_prompt=t.system_prompt,
        cache_dir=t.cache_dir,
        prices=prices_of(t),
    )
    if stats["failed"]:
        raise TeacherError(
            f"{stats['failed']} teacher requests failed after their retries (see "
            f"{path}); run the same command again to ask for them"
        )
    rd.set_metric("demos", stats)


def _demo_examples(train: list[Example], demos: dict[str, list[str]]) -> list[tuple[Example, str]]:
    """One SFT example per kept demonstration."""
    return [(e, text) for e in train for text in demos.get(e.id, [])]


def _samples(
    rd: RunDir, student: Student, task: Task, train: list[Example], recipe: Recipe, engine: Engine
) -> dict[str, dict[str, list[dict]]]:
    """k sampled paths per training question (CoT; also direct answers for cot_vs_direct),
    each judged against the ground truth; appended per batch, resumed per question. A path's
    draws depend on the seed, its question and its index only, so a resumed or multi-process
    stage samples what one uninterrupted process would have."""
    styles = ["cot"] + (["direct"] if recipe.pairs.policy == "cot_vs_direct" else [])
    first = recipe.sampling.offset
    questions = train[first : first + recipe.sampling.n_questions]
    by_id = {e.id: e for e in questions}
    path = rd / "samples.jsonl"
    runtime = rd.runtime
    if not rd.done("samples"):
        with rd.stage("samples"):
            student.load_weights(rd / "sft" / "model")
            s = recipe.sampling
            want = {"cot": s.k, "direct": 1}
            rows = read_jsonl(path)
            count = Counter((r["style"], r["id"]) for r in rows)
            complete = [r for r in rows if count[r["style"], r["id"]] == want[r["style"]]]
            if len(complete) < len(rows) and runtime.is_main:  # killed mid-batch: redo whole
                write_jsonl_atomic(path, complete)
            for style in styles:
                have = {r["id"] for r in complete if r["style"] == style}
                todo = [e for e in questions if e.id not in have]
                if not todo:
                    continue
                k = s.k if style == "cot" else 1
                params = SamplingParams(
                    k=k,
                    greedy=False,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    max_new_tokens=s.max_new_tokens,
                    batch_size=s.batch_size,
                    seed=recipe.seed + (0 if style == "cot" else 1),
                    calculator=recipe.calculator,
                )
                items = [
                    (e.id, student.prompt_ids(_styled(task.prompt(e), style, recipe)))
                    for e in runtime.shard(todo)
                ]

                def judged(batch, style=style):
                    return [
                        {
                            "id": qid,
                            "style": style,
                            "text": text,
                            "correct": task.is_correct(text, by_id[qid]),
                            "tokens": n,
                        }
                        for qid, texts, lengths in batch
                        for text, n in zip(texts, lengths, strict=True)
                    ]

                mine = (judged(b) for b in generate(student, items, params, engine))
                for _ in runtime.collect(mine, path, f"sample {style}", len(todo) * k):
                    pass
            rd.set_metric("samples", _sample_stats(read_jsonl(path), recipe.sampling.k))
    out: dict[str, dict[str, list[dict]]] = {s: {} for s in styles}
    for r in read_jsonl(path):
        out[r["style"]].setdefault(r["id"], []).append(r)
    return out


def _styled(prompt: str, style: str, recipe: Recipe) -> str:
    return prompt if style == "cot" else f"{prompt}\n{recipe.pairs.direct_instruction}"


def _sample_stats(rows: list[dict], k: int) -> dict:
    cot = [r for r in rows if r["style"] == "cot"]
    per_q: dict[str, list[bool]] = {}
    for r in cot:
        per_q.setdefault(r["id"], []).append(r["correct"])
    return {
        "questions": len(per_q),
        "paths": len(cot),
        "path_accuracy": round(sum(r["correct"] for r in cot) / max(1, len(cot)), 4),
        f"pass@{k}": round(sum(any(v) for v in per_q.values()) / max(1, len(per_q)), 4),
        "all_correct": sum(all(v) for v in per_q.values()),
        "none_correct": sum(not any(v) for v in per_q.values()),
        "mean_tokens": round(statistics.fmean(r["tokens"] for r in cot), 1) if cot else 0,
    }


def _pairs(rd: RunDir, samples: dict, demos: dict[str, str], recipe: Recipe) -> list[dict]:
    path = rd / "pairs.jsonl"
    if not rd.done("pairs"):
        with rd.stage("pairs"):
            if rd.runtime.is_main:
                _make_pairs(rd, samples, demos, recipe, path)
    return read_jsonl(path)


def _make_pairs(rd: RunDir, samples: dict, demos: dict[str, str], recipe: Recipe, path: Path):
    """Preference pairs from the judged samples, written to ``path`` (rank 0)."""
    p = recipe.pairs
    if p.policy == "correct_vs_wrong":
        pairs = correct_vs_wrong(
            samples["cot"],
            demos,
            max_pairs=p.max_pairs_per_question,
            teacher_fallback=p.teacher_fallback,
            seed=recipe.seed,
        )
        if p.truncate_rejected:
            for x in pairs:
                cut = to_first_divergence(x["chosen"], x["rejected"])
                x["rejected_truncated"] = cut != x["rejected"]
                x["rejected_full"], x["rejected"] = x["rejected"], cut
    else:
        pairs = cot_vs_direct(
            samples["cot"],
            samples["direct"],
            max_pairs=p.max_pairs_per_question,
            seed=recipe.seed,
        )
    write_jsonl_atomic(path, pairs)
    rd.set_metric(
        "pairs",
        {
            "pairs": len(pairs),
            "questions": len({x["id"] for x in pairs}),
            "chosen_from_teacher": sum(x["chosen_from"] == "teacher" for x in pairs),
            "rejected_truncated": sum(x.get("rejected_truncated", False) for x in pairs),
        },
    )
