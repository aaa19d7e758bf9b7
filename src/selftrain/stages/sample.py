"""Stage ``samples``: the student answers training questions itself, k reasoning paths each,
and the ground truth judges every path. Records go to a JSONL file per batch, and a rerun
resumes per question: a path's draws depend on the seed, its question and its index only, so a
resumed or multi-process stage samples what one uninterrupted process would have."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selftrain import tracking
from selftrain.config import SamplingConfig
from selftrain.io import read_jsonl, write_jsonl_atomic
from selftrain.models import Student
from selftrain.rundir import RunDir
from selftrain.sampling import Engine, SamplingParams, generate
from selftrain.tasks.base import Example, Task


@dataclass
class Style:
    """One way of asking: its name in the records (None: not recorded), the sampler's
    settings and the prompt's token ids of a question."""

    name: str | None
    params: SamplingParams
    prompt_ids: Callable[[Example], list[int]]


@dataclass
class Sampler:
    """How a run samples: its student, decoding engine and the task that judges each path."""

    rd: RunDir
    student: Student
    engine: Engine
    task: Task

    def __call__(
        self,
        stage: str,
        questions: Sequence[Example],
        styles: Sequence[Style],
        path: Path,
        *,
        weights: Path,
        key: str | tuple[str, ...],
        label: str,
    ) -> None:
        """Sample ``path`` from ``weights`` unless ``stage`` is done: per style, ``params.k``
        judged paths for each question that lacks them; the first style's statistics go to
        metrics.json at ``key``. Several processes each sample every ``world``-th question
        left; rank 0 writes every record."""
        rd = self.rd
        if rd.done(stage):
            return
        with rd.stage(stage):
            self.student.load_weights(weights)
            want = {s.name: s.params.k for s in styles}
            rows = read_jsonl(path)
            count = Counter((r.get("style"), r["id"]) for r in rows)
            done = [r for r in rows if count[r.get("style"), r["id"]] == want[r.get("style")]]
            if len(done) < len(rows) and rd.runtime.is_main:  # killed mid-batch: redo those
                write_jsonl_atomic(path, done)
            tokens, start = 0, time.monotonic()
            for style in styles:
                have = {r["id"] for r in done if r.get("style") == style.name}
                todo = [e for e in questions if e.id not in have]
                if todo:
                    tokens += self._sample(todo, style, path, label)
            first = styles[0]
            rows = [r for r in read_jsonl(path) if r.get("style") == first.name]
            stats = sample_stats(rows, first.params.k)
            rd.put(key, stats)
            speed = {"tokens_per_s": tokens / (time.monotonic() - start)} if tokens else {}
            tracking.log({**{k: stats[k] for k in _TRACKED}, **speed}, 0)

    def _sample(self, todo: list[Example], style: Style, path: Path, label: str) -> int:
        """Sample and judge ``todo``'s paths of one style, appending them to ``path``;
        returns the tokens sampled."""
        runtime, by_id = self.rd.runtime, {e.id: e for e in todo}
        tag = {} if style.name is None else {"style": style.name}

        def judged(batch) -> list[dict]:
            return [
                {
                    "id": qid,
                    **tag,
                    "text": text,
                    "correct": self.task.is_correct(text, by_id[qid]),
                    "tokens": n,
                }
                for qid, texts, lengths in batch
                for text, n in zip(texts, lengths, strict=True)
            ]

        items = [(e.id, style.prompt_ids(e)) for e in runtime.shard(todo)]
        mine = (judged(b) for b in generate(self.student, items, style.params, self.engine))
        total = len(todo) * style.params.k
        name = f"{label} {style.name or 'sample'} k={style.params.k}"
        return sum(r["tokens"] for b in runtime.collect(mine, path, name, total) for r in b)


# sample_stats' scalars sent to the experiment trackers
_TRACKED = ("pass@k", "path_accuracy", "all_correct", "none_correct", "mean_tokens")


def sampling_params(cfg: SamplingConfig, *, k: int, seed: int, calculator: bool) -> SamplingParams:
    """The sampler's settings for ``k`` paths per question from a recipe's ``sampling``."""
    return SamplingParams(
        k=k,
        greedy=False,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        seed=seed,
        calculator=calculator,
    )


def read_samples(path: Path, style: str | None = None) -> dict[str, list[dict]]:
    """Question id -> its judged paths (of one style), in the order they were written."""
    out: dict[str, list[dict]] = {}
    for r in read_jsonl(path):
        if r.get("style") == style:
            out.setdefault(r["id"], []).append(r)
    return out


def sample_stats(rows: Sequence[dict], k: int) -> dict[str, Any]:
    """The sampler's pass@k (share of questions with at least one correct path), path accuracy,
    questions solved on every path and on none, and the mean path length in tokens."""
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
        "all_correct": sum(all(v) for v in per_q.values()),
        "none_correct": sum(not any(v) for v in per_q.values()),
        "questions_with_a_wrong_path": sum(not all(v) for v in per_q.values()),
        "mean_tokens": round(sum(r["tokens"] for r in rows) / max(1, len(rows)), 1),
    }
