"""The model card (README.md) of an exported model: how it was trained (the recipe), on what
data, and its accuracy with 95% intervals, read from the run's recipe.yaml and metrics.json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from selftrain.export.write import Source

# student specs that stand for a hub model
_HUB_NAMES = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def model_card(source: Source, name: str, dtype: str, gguf: str | None = None) -> str:
    """The card's Markdown, with the hub's YAML header."""
    recipe, metrics = source.recipe(), source.metrics()
    method = recipe.get("method", "selftrain")
    header: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["selftrain", method, *(["gguf"] if gguf else [])],
    }
    if hub_id(source.base):
        header["base_model"] = hub_id(source.base)
    parts = [
        "---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n",
        f"# {name}\n",
        _summary(source, recipe, dtype, gguf),
        _data(recipe, metrics, source.stage),
        _accuracy(metrics, source.stage),
        _comparisons(metrics),
        _usage(name, recipe, gguf),
        _recipe_block(recipe),
    ]
    return "\n".join(p for p in parts if p)


def hub_id(spec: str) -> str | None:
    """The hub id a student spec names, if any (not a local path, not a test model)."""
    if spec in _HUB_NAMES:
        return _HUB_NAMES[spec]
    if spec.count("/") == 1 and not Path(spec).exists() and not spec.startswith((".", "~")):
        return spec
    return None


def _summary(source: Source, recipe: dict, dtype: str, gguf: str | None) -> str:
    how = "its LoRA adapter merged into the base" if source.lora else "full fine-tuning"
    lines = [
        f"Trained with selftrain ({recipe.get('method', 'a recipe')}), "
        f"{how}; weights in {dtype}.\n",
        f"- base model: `{hub_id(source.base) or Path(source.base).name}`",
    ]
    if source.stage:
        lines.append(f"- checkpoint: stage `{source.stage}` of run `{source.run_dir.name}`")
    lora = recipe.get("student", {}).get("lora", {})
    if source.lora and lora:
        lines.append(f"- LoRA: r={lora.get('r')}, alpha={lora.get('alpha')} (merged)")
    if gguf:
        lines.append(f"- GGUF for llama.cpp and Ollama: `{gguf}`")
    return "\n".join(lines) + "\n"


def _data(recipe: dict, metrics: dict, stage: str | None) -> str:
    """The task it was trained on and its stage's training record (examples, pairs, steps)."""
    lines = ["## Data\n"]
    task = recipe.get("task") or {}
    if task.get("name"):
        args = ", ".join(f"{k}={v}" for k, v in (task.get("args") or {}).items())
        lines.append(f"- task: `{task['name']}`" + (f" ({args})" if args else ""))
    for key, value in _training_record(metrics, stage).items():
        if isinstance(value, (int, float, str)):
            lines.append(f"- {key.replace('_', ' ')}: {value}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _training_record(metrics: dict, stage: str | None) -> dict:
    """metrics.json's training record of the stage the checkpoint comes from."""
    if not stage:
        return {}
    parts = stage.split("/")
    if len(parts) == 1:  # SRIT's sft, rft, dpo, sft_more; DPO-ST's warmup
        record = metrics.get(f"{stage}_training") or metrics.get(stage, {}).get("training")
        return record if isinstance(record, dict) else {}
    if len(parts) == 3 and parts[1].startswith("r"):  # DPO-ST: ARM/rN/sft, ARM/rN/dpo
        arm, r, kind = parts[0], parts[1][1:], parts[2]
        key = "dpo_training" if kind == "dpo" else "training"
        record = metrics.get(arm, {}).get("rounds", {}).get(r, {}).get(key)
        return record if isinstance(record, dict) else {}
    return {}


def accuracy_rows(metrics: dict) -> Iterator[tuple[str, str, dict]]:
    """(model, evaluation set, result) of every accuracy in metrics.json, the model named by
    its stage folder (sft, warmup, dpo_st/r1/sft, dpo_st/r1/dpo)."""

    def walk(node: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], dict]]:
        if isinstance(node, dict) and {"accuracy", "n", "ci95"} <= node.keys():
            yield path, node
        elif isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, (*path, str(key)))

    for path, result in walk(metrics, ()):
        if path[0] in ("calculator", "compare") or len(path) < 2:
            continue
        yield _model_label(path[:-1]), path[-1], result


def _model_label(path: tuple[str, ...]) -> str:
    if len(path) == 4 and path[1] == "rounds":  # (arm, rounds, r, eval | eval_dpo)
        return f"{path[0]}/r{path[2]}/{'dpo' if path[3] == 'eval_dpo' else 'sft'}"
    if len(path) == 2 and path[1] == "eval":  # (warmup, eval)
        return path[0]
    return "/".join(path)


def _accuracy(metrics: dict, stage: str | None) -> str:
    rows = list(accuracy_rows(metrics))
    if not rows:
        return ""
    lines = [
        "## Accuracy\n",
        "Greedy decoding, as evaluated in the run; 95% Wilson intervals. **Bold**: this model.\n",
        "| model | evaluation set | accuracy (%) | 95% interval | n |",
        "|---|---|---|---|---|",
    ]
    for model, split, r in rows:
        lo, hi = r["ci95"]
        cells = [model, split, f"{100 * r['accuracy']:.1f}", f"{100 * lo:.1f}-{100 * hi:.1f}"]
        cells.append(str(r["n"]))
        if model == stage:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _comparisons(metrics: dict) -> str:
    from selftrain.stats import describe

    compare = metrics.get("compare")
    if not isinstance(compare, dict) or not compare:
        return ""
    lines = ["Paired comparisons on the same questions (points, 95% interval, McNemar p):\n"]
    for name, by_split in compare.items():
        for split, c in by_split.items():
            if isinstance(c, dict) and {"diff", "ci95", "p_value", "n"} <= c.keys():
                lines.append(f"- {name}, {split}: {describe(c)}")
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def _usage(name: str, recipe: dict, gguf: str | None) -> str:
    system = recipe.get("student", {}).get("system_prompt") if recipe else None
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "What is 12 + 35?"}
    ]
    lines = [
        "## Use\n",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{name}")',
        f"messages = {messages!r}",
        "inputs = tokenizer.apply_chat_template(",
        '    messages, add_generation_prompt=True, return_tensors="pt", return_dict=True',
        ")",
        "out = model.generate(**inputs, max_new_tokens=256)",
        'new = out[0, inputs["input_ids"].shape[1] :]',
        "print(tokenizer.decode(new, skip_special_tokens=True))",
        "```",
    ]
    if system:
        lines.append(f"\nThe model was trained under the system prompt {system!r}.")
    if gguf:
        lines += ["", "With llama.cpp:", "", "```bash", f"llama-cli -m {gguf}", "```"]
    return "\n".join(lines) + "\n"


def _recipe_block(recipe: dict) -> str:
    if not recipe:
        return ""
    text = yaml.safe_dump(recipe, sort_keys=False).rstrip()
    summary = "<details><summary>recipe.yaml</summary>"
    return f"## Recipe\n\n{summary}\n\n```yaml\n{text}\n```\n\n</details>\n"
