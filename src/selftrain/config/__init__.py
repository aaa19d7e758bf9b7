"""Recipes: the schema (sections.py: shared sections; methods.py: one schema per method) and
YAML loading with errors that name the key and the file.

Every knob of a run lives in the schema; a recipe file sets any subset of them and the rest
keep their defaults, which are the embedded default recipe's values.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from selftrain.config.methods import (
    DPOSTConfig,
    DPOSTDPOConfig,
    DPOSTRecipe,
    DPOSTSamplingConfig,
    DPOSTSFTConfig,
    EvalTaskConfig,
    Recipe,
    SRITRecipe,
    SRITSamplingConfig,
    parse_recipe,
)
from selftrain.config.sections import (
    DPOConfig,
    EvalConfig,
    LoraConfig,
    OptimizerConfig,
    PairsConfig,
    RFTConfig,
    SamplingConfig,
    SFTConfig,
    StudentConfig,
    TaskConfig,
    TeacherConfig,
    VLLMConfig,
)
from selftrain.errors import yaml_problem

__all__ = [
    "DPOConfig",
    "DPOSTConfig",
    "DPOSTDPOConfig",
    "DPOSTRecipe",
    "DPOSTSFTConfig",
    "DPOSTSamplingConfig",
    "EvalConfig",
    "EvalTaskConfig",
    "LoraConfig",
    "OptimizerConfig",
    "PairsConfig",
    "RFTConfig",
    "Recipe",
    "RecipeError",
    "SFTConfig",
    "SRITRecipe",
    "SRITSamplingConfig",
    "SamplingConfig",
    "StudentConfig",
    "TaskConfig",
    "TeacherConfig",
    "VLLMConfig",
    "default_recipe_path",
    "load_recipe",
    "parse_recipe",
]


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


def default_recipe_path() -> Path:
    return Path(__file__).parent.parent / "recipes" / "default.yaml"


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe YAML (the embedded default when ``path`` is None), then apply
    ``overrides`` (a nested dict). Unknown keys and wrong types raise RecipeError."""
    path = Path(path) if path is not None else default_recipe_path()
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {yaml_problem(e)}") from None
    except UnicodeDecodeError as e:
        raise RecipeError(f"{path}: not UTF-8 text (byte {e.start}): is it a recipe?") from None
    except OSError as e:  # a directory, no permission, ...
        raise RecipeError(
            f"{path}: cannot read the recipe: {e.strerror} (give a recipe YAML file)"
        ) from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = _merge(data, overrides)
    try:
        return parse_recipe(data)
    except ValidationError as e:
        raise RecipeError(_describe(path, e, bool(overrides))) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(path: Path, err: ValidationError, overrides: bool = False) -> str:
    """One line: the recipe, then every key that is wrong and why, separated by ``;``."""
    lines = []
    for e in err.errors():
        loc = e["loc"][1:] if e["loc"] and e["loc"][0] in _METHODS else e["loc"]
        key = ".".join(str(p) for p in loc)
        if not key:  # a check across sections: its message names the keys
            lines.append(e["msg"].removeprefix("Value error, "))
        elif e["type"] == "extra_forbidden" and len(loc) == 1 and key in _ONLY:
            lines.append(f"key '{key}' is read by {_ONLY[key]} only")
        elif e["type"] == "extra_forbidden":
            lines.append(f"unknown key '{key}'")
        else:
            lines.append(f"key '{key}': {e['msg']} (got {e.get('input')!r})")
    where = f"{path} with --set" if overrides else str(path)
    return f"{where}: invalid recipe: {'; '.join(lines)}"


_METHODS = ("srit", "dpo_st", "self_training")
_ONLY = {"dpo_st": "methods dpo_st and self_training"} | {
    k: "method srit" for k in SRITRecipe.model_fields if k not in DPOSTRecipe.model_fields
}
