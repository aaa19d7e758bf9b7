"""Where a self-refinement gain comes from: stage 2's ingredients alone and together, each
trained from one finished run's stage-1 model on that run's own samples and pairs, and
evaluated on the same questions as its sft model (paired comparisons).

    python experiments/ablation.py runs/demo --arms rft,rft+demos,dpo,rft+demos+dpo

Each arm is a run directory under RUN/ablation/ARM that starts with RUN's finished stages
(data, demonstrations, sft and its evaluation, samples, pairs) and runs the rest of the
pipeline with the arm's settings, so it resumes like any run. An arm whose settings are RUN's
own reuses RUN's results. Prints one table: each model against sft, per split, with the
difference, its 95% interval and the exact McNemar p-value.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import yaml

from selftrain.config import Recipe, load_recipe
from selftrain.io import read_json, write_json_atomic, write_text_atomic
from selftrain.pipeline import srit
from selftrain.stats import describe

ARMS = {  # each arm's stage-2 settings in full, so an arm means the same in every run
    "rft": {"rft": {"enabled": True, "with_demos": False}, "dpo": {"enabled": False}},
    "rft+demos": {"rft": {"enabled": True, "with_demos": True}, "dpo": {"enabled": False}},
    "dpo": {"rft": {"enabled": False}, "dpo": {"enabled": True}},
    "rft+dpo": {"rft": {"enabled": True, "with_demos": False}, "dpo": {"enabled": True}},
    "rft+demos+dpo": {"rft": {"enabled": True, "with_demos": True}, "dpo": {"enabled": True}},
}
SHARED = ["data", "demos.jsonl", "samples.jsonl", "pairs.jsonl", "sft", "eval/sft"]
SHARED_STAGES = ["data", "demos", "sft", "eval_sft", "samples", "pairs"]
SHARED_METRICS = ["demos", "sft_training", "sft", "samples", "pairs"]


def arm_recipe(base: Recipe, arm: dict) -> Recipe:
    data = base.model_dump(mode="json")
    for key, value in arm.items():
        data[key] = {**data[key], **value}
    data["sft_more"] = False
    data["eval"]["evaluate_base"] = False
    return load_recipe(None, data)


def seed_arm(run: Path, arm_dir: Path, recipe: Recipe) -> None:
    """Give a new arm directory the run's finished shared stages."""
    if (arm_dir / "state.json").exists():
        return
    arm_dir.mkdir(parents=True, exist_ok=True)
    for name in SHARED:
        src, dst = run / name, arm_dir / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, dst)
    state = read_json(run / "state.json")
    metrics = read_json(run / "metrics.json")
    write_text_atomic(
        arm_dir / "recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    )
    write_json_atomic(
        arm_dir / "state.json",
        {
            "done": [s for s in state["done"] if s in SHARED_STAGES],
            "seconds": {s: v for s, v in state["seconds"].items() if s in SHARED_STAGES},
        },
    )
    write_json_atomic(
        arm_dir / "metrics.json", {k: metrics[k] for k in SHARED_METRICS if k in metrics}
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="a finished run directory (selftrain run --run-dir)")
    ap.add_argument("--arms", default="rft,dpo,rft+dpo", help=f"of {', '.join(ARMS)}")
    args = ap.parse_args(argv)
    base = load_recipe(args.run / "recipe.yaml")
    own = (base.rft.enabled, base.dpo.enabled, base.rft.with_demos)
    rows = []
    for name in args.arms.split(","):
        if name not in ARMS:
            ap.error(f"unknown arm {name!r}; arms: {', '.join(ARMS)}")
        recipe = arm_recipe(base, ARMS[name])
        if (recipe.rft.enabled, recipe.dpo.enabled, recipe.rft.with_demos) == own:
            metrics = read_json(args.run / "metrics.json")  # the run's own recipe
        else:
            arm_dir = args.run / "ablation" / name
            seed_arm(args.run, arm_dir, recipe)
            metrics = srit.run(recipe, arm_dir)
        final = "dpo" if recipe.dpo.enabled else "rft"
        rows.append((name, metrics, metrics.get("compare", {}).get(f"{final}_vs_sft", {})))
    splits = base.eval.splits
    print(f"\n| arm | steps | {' | '.join(f'{s} vs sft' for s in splits)} |")
    print(f"|---|---|{'---|' * len(splits)}")
    for name, m, c in rows:
        steps = sum(m.get(k, {}).get("steps", 0) for k in ("rft_training", "dpo_training"))
        cells = " | ".join(describe(c[s]) if s in c else "-" for s in splits)
        print(f"| {name} | {steps} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
