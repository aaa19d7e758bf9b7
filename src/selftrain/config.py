"""Recipe schema (pydantic) and YAML loading with errors that name the key and the file.

Every knob of a run lives here; a recipe file sets any subset of them and the rest keep
the defaults below, which are the embedded default recipe's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Strict):
    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # adapt only the top N decoder layers: backward then stops at layer L-N, which made
    # training 1.5x faster (top 15 of SmolLM2's 30); None: every layer
    top_layers: int | None = Field(None, gt=0)


class StudentConfig(_Strict):
    # "smollm2-135m-instruct" (the embedded GGUF default), a hub id, a local folder,
    # a .gguf file, or "tiny-llama" / "tiny-qwen2" (random models from a small config).
    model: str = "smollm2-135m-instruct"
    gguf_file: str | None = None  # with a folder or hub id that holds several GGUF files
    dtype: Literal["float32", "bfloat16"] = "float32"
    autocast_bf16: bool = False  # bf16 autocast for matmuls on CPUs that support it
    system_prompt: str | None = "Solve the problem step by step."
    lora: LoraConfig = LoraConfig()


class TaskConfig(_Strict):
    name: str = "arithmetic"
    args: dict[str, Any] = {}


class TeacherConfig(_Strict):
    # "solver": the generated task's own solver; "gold": the dataset's gold rationales.
    kind: Literal["solver", "gold"] = "solver"
    n_questions: int = Field(400, gt=0)  # training questions that get a demonstration


class SFTConfig(_Strict):
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, gt=0)
    max_epochs: int = Field(6, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    eval_every: int = Field(50, gt=0)  # optimizer steps between validation checks
    patience: int = Field(2, ge=1)  # checks without a gain in validation accuracy, then stop
    val_questions: int = Field(100, gt=0)
    max_new_tokens: int = Field(96, gt=0)


class SamplingConfig(_Strict):
    n_questions: int = Field(300, gt=0)  # training questions the student answers itself
    # where those questions start in the train split: 0 re-asks the demonstrated questions;
    # teacher.n_questions asks only questions the teacher never demonstrated (no fallback)
    offset: int = Field(0, ge=0)
    k: int = Field(4, gt=0)  # reasoning paths per question
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(64, gt=0)  # sequences decoded together


class PairsConfig(_Strict):
    # correct_vs_wrong: chosen = a correct sampled path (fallback: the teacher's demo),
    # rejected = a wrong one. cot_vs_direct: SRIT's chosen = CoT path, rejected = direct answer.
    policy: Literal["correct_vs_wrong", "cot_vs_direct"] = "correct_vs_wrong"
    max_pairs_per_question: int = Field(2, gt=0)
    teacher_fallback: bool = True
    # penalise a rejected path only up to its first line that departs from the chosen one
    truncate_rejected: bool = True
    direct_instruction: str = "Give only the final answer as a number, with no working."


class DPOConfig(_Strict):
    loss: Literal["sigmoid", "ipo", "dpop"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    dpop_lambda: float = Field(50.0, ge=0)  # DPOP's penalty on a chosen answer losing likelihood
    nll_weight: float = Field(0.0, ge=0)  # length-normalised NLL on the chosen answer
    lr: float = Field(5e-5, gt=0)
    batch_size: int = Field(8, gt=0)  # pairs per optimizer step
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)


class EvalConfig(_Strict):
    splits: list[str] = ["in_domain", "out_of_domain", "longer"]
    n: int = Field(200, gt=0)  # questions per split
    n_per_split: dict[str, int] = {}  # overrides n for a split
    base_n: int | None = Field(None, gt=0)  # questions per split for the untrained student
    evaluate_base: bool = True
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(64, gt=0)


class Recipe(_Strict):
    name: str = "srit-arithmetic"
    method: Literal["srit"] = "srit"
    seed: int = 0
    threads: int | None = None  # torch threads; None: torch's default
    # fill in ``<<expr=`` annotations with a safe calculator while decoding (sampling and eval)
    calculator: bool = True
    student: StudentConfig = StudentConfig()
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    sft: SFTConfig = SFTConfig()
    sampling: SamplingConfig = SamplingConfig()
    pairs: PairsConfig = PairsConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()
    sft_more: bool = True  # the control: SFT trained on for as many steps as DPO took


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


def default_recipe_path() -> Path:
    return Path(__file__).parent / "recipes" / "default.yaml"


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe YAML (the embedded default when ``path`` is None), then apply
    ``overrides`` (a nested dict). Unknown keys and wrong types raise RecipeError."""
    path = Path(path) if path is not None else default_recipe_path()
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = _merge(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_describe(path, e)) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
