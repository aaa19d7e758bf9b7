"""Tests for recipe loading, validation errors, overrides and the CLI's --set parsing."""

from __future__ import annotations

import contextlib
import re

import pytest
import typer
import yaml
from typer.testing import CliRunner

from selftrain.cli import _overrides, app
from selftrain.config import DPOSTRecipe, RecipeError, SRITRecipe, default_recipe_path, load_recipe


def _write(tmp_path, text: str, name: str = "recipe.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k != "args":
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# --- the embedded default recipe ---------------------------------------------------------


def test_default_recipe_loads():
    r = load_recipe()
    assert isinstance(r, SRITRecipe)
    assert r.name == "rft-arithmetic"
    assert r.method == "srit"
    assert r.rft.enabled and r.rft.with_demos and r.student.autocast_bf16 == "auto"
    assert not r.dpo.enabled  # DPO after RFT lowered accuracy (docs/EXPERIMENTS.md)
    assert r.sampling.n_questions >= 1024  # RFT's gain comes from many new questions
    assert r.eval.n >= 500  # paired comparisons need the power to see a gain
    assert r.student.model == "smollm2-135m-instruct"
    assert r.student.lora.r == 16
    assert r.pairs.policy == "correct_vs_wrong"
    assert r.eval.splits == ["in_domain", "out_of_domain"]
    assert r.calculator and r.sampling.offset == r.teacher.n_questions


def test_default_recipe_values_match_yaml():
    data = yaml.safe_load(default_recipe_path().read_text(encoding="utf-8"))
    dumped = load_recipe().model_dump()
    flat_yaml, flat_model = _flatten(data), _flatten(dumped)
    assert flat_yaml, "default recipe YAML is empty"
    for key, value in flat_yaml.items():
        assert key in flat_model, key
        assert flat_model[key] == value, key


def test_default_recipe_path_is_loaded_explicitly_too():
    assert load_recipe(default_recipe_path()) == load_recipe()


def test_partial_recipe_keeps_defaults(tmp_path):
    path = _write(tmp_path, "name: mine\nsft: {lr: 1.0e-3}\n")
    r = load_recipe(path)
    assert r.name == "mine"
    assert r.sft.lr == pytest.approx(1e-3)
    assert r.sft.batch_size == SRITRecipe().sft.batch_size
    assert r.dpo == SRITRecipe().dpo


def test_empty_recipe_file_is_all_defaults(tmp_path):
    assert load_recipe(_write(tmp_path, "")) == SRITRecipe()


# --- errors name the file and the key ----------------------------------------------------


def test_unknown_top_level_key(tmp_path):
    path = _write(tmp_path, "name: x\nbogus_key: 3\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "bogus_key" in msg
    assert "unknown key" in msg


def test_unknown_nested_key_names_dotted_key(tmp_path):
    path = _write(tmp_path, "sft: {lrr: 1}\n")
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "sft.lrr" in msg


def test_unknown_deeply_nested_key(tmp_path):
    path = _write(tmp_path, "student: {lora: {rank: 8}}\n")
    with pytest.raises(RecipeError, match=r"student\.lora\.rank"):
        load_recipe(path)


def test_wrong_type_names_dotted_key(tmp_path):
    path = _write(tmp_path, 'sft: {batch_size: "eight"}\n')
    with pytest.raises(RecipeError) as exc:
        load_recipe(path)
    msg = str(exc.value)
    assert str(path) in msg
    assert "sft.batch_size" in msg
    assert "eight" in msg


def test_out_of_range_value_names_key(tmp_path):
    path = _write(tmp_path, "dpo: {beta: -1}\n")
    with pytest.raises(RecipeError, match=r"dpo\.beta"):
        load_recipe(path)


def test_non_mapping_yaml(tmp_path):
    path = _write(tmp_path, "- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping") as exc:
        load_recipe(path)
    assert str(path) in str(exc.value)


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "sft: {lr: [1, 2\nname: x\n")
    with pytest.raises(RecipeError, match="not valid YAML") as exc:
        load_recipe(path)
    assert str(path) in str(exc.value)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(RecipeError, match="not found") as exc:
        load_recipe(path)
    assert str(path) in str(exc.value)


def test_recipe_error_is_a_value_error():
    assert issubclass(RecipeError, ValueError)


# --- overrides ---------------------------------------------------------------------------


def test_overrides_are_applied_and_merged(tmp_path):
    path = _write(tmp_path, "name: base\nsft: {lr: 1.0e-3, batch_size: 4}\n")
    r = load_recipe(path, {"sft": {"lr": 2e-4}, "eval": {"splits": ["a"]}, "seed": 7})
    assert r.sft.lr == pytest.approx(2e-4)
    assert r.sft.batch_size == 4  # sibling key from the file survives the merge
    assert r.eval.splits == ["a"]
    assert r.seed == 7
    assert r.name == "base"


def test_overrides_on_default_recipe():
    r = load_recipe(overrides={"student": {"lora": {"enabled": False}}})
    assert r.student.lora.enabled is False
    assert r.student.lora.r == 16


def test_overrides_are_validated(tmp_path):
    with pytest.raises(RecipeError, match=r"sft\.lrr"):
        load_recipe(overrides={"sft": {"lrr": 1}})
    with pytest.raises(RecipeError, match=r"sft\.batch_size"):
        load_recipe(overrides={"sft": {"batch_size": "eight"}})


# --- the CLI's --set parsing -------------------------------------------------------------


def test_cli_overrides_nested_and_yaml_parsed():
    got = _overrides(["sft.lr=1.0e-4", "eval.splits=[a, b]", "student.lora.enabled=false"])
    assert got == {
        "sft": {"lr": 1e-4},
        "eval": {"splits": ["a", "b"]},
        "student": {"lora": {"enabled": False}},
    }
    assert isinstance(got["sft"]["lr"], float)
    assert got["student"]["lora"]["enabled"] is False


def test_cli_overrides_merge_siblings_and_keep_equals_in_value():
    got = _overrides(["sft.lr=0.5", "sft.batch_size=4", "name=a=b"])
    assert got == {"sft": {"lr": 0.5, "batch_size": 4}, "name": "a=b"}


def test_cli_overrides_exponent_without_dot_is_float():
    got = _overrides(["sft.lr=1e-4"])
    assert got == {"sft": {"lr": 1e-4}}
    assert isinstance(got["sft"]["lr"], float)


def test_cli_overrides_exponent_still_loads_as_float_field():
    # pydantic coerces the string for float fields, so the recipe itself still gets a float.
    r = load_recipe(overrides=_overrides(["sft.lr=1e-4"]))
    assert r.sft.lr == pytest.approx(1e-4)


def test_cli_overrides_malformed_item():
    with pytest.raises(typer.BadParameter, match="KEY=VALUE"):
        _overrides(["sft.lr"])


def test_cli_overrides_empty():
    assert _overrides([]) == {}


# --- the CLI on a bad recipe -------------------------------------------------------------


def _cli_text(result) -> str:
    text = result.output
    with contextlib.suppress(ValueError):  # older click: stderr not captured separately
        text += result.stderr
    return text


def test_cli_bad_recipe_exits_2_and_names_key_and_file(tmp_path):
    path = _write(tmp_path, "sft: {lrr: 1}\n", name="bad.yaml")
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2, _cli_text(result)
    text = _cli_text(result)
    assert "sft.lrr" in text
    assert "bad.yaml" in text
    assert "error:" in text


def test_cli_bad_set_override_exits_2(tmp_path):
    path = _write(tmp_path, "name: ok\n")
    result = CliRunner().invoke(app, ["run", str(path), "--set", "sft.batch_size=eight"])
    assert result.exit_code == 2, _cli_text(result)
    assert "sft.batch_size" in _cli_text(result)


def test_device_and_precision_keys(tmp_path):
    r = load_recipe(None)
    assert r.student.device == "auto" and r.student.dtype == "auto"
    for ok in ("cpu", "cuda", "cuda:3", "auto"):
        assert load_recipe(None, {"student": {"device": ok}}).student.device == ok
    with pytest.raises(RecipeError, match=r"student\.device.*auto, cpu, cuda or cuda:N"):
        load_recipe(None, {"student": {"device": "gpu0"}})


def test_qlora_needs_lora():
    with pytest.raises(RecipeError, match=r"load_in_4bit.*lora\.enabled"):
        load_recipe(None, {"student": {"load_in_4bit": True, "lora": {"enabled": False}}})
    assert load_recipe(None, {"student": {"load_in_4bit": True}}).student.load_in_4bit


def test_micro_batches_and_the_engine_are_keys_of_every_method():
    r = load_recipe(None, {"sft": {"micro_batch_size": 2}, "dpo": {"micro_batch_size": 1}})
    assert (r.sft.micro_batch_size, r.dpo.micro_batch_size) == (2, 1)
    with pytest.raises(RecipeError, match="micro_batch_size"):
        load_recipe(None, {"sft": {"micro_batch_size": 0}})
    from selftrain.config import default_recipe_path

    st = default_recipe_path().with_name("dpo_st.yaml")
    r = load_recipe(
        st,
        {
            "sampling": {"engine": "vllm", "vllm": {"gpu_memory_utilization": 0.3}},
            "dpo_st": {"sft": {"micro_batch_size": 4}, "dpo": {"micro_batch_size": 2}},
        },
    )
    assert r.sampling.engine == "vllm" and r.sampling.vllm.gpu_memory_utilization == 0.3
    assert load_recipe(st, {"sampling": {"k": 9}}).sampling.k == 9  # the DPO step's k
    with pytest.raises(RecipeError, match=r"unknown key 'sampling\.offset'"):
        load_recipe(st, {"sampling": {"offset": 9}})  # SRIT's question range
    with pytest.raises(RecipeError, match=r"sampling\.engine"):
        load_recipe(None, {"sampling": {"engine": "tgi"}})


def test_srit_paper_recipe_is_the_papers_method():
    r = load_recipe(default_recipe_path().with_name("srit_paper.yaml"))
    assert r.pairs.policy == "cot_vs_direct"
    assert not r.rft.enabled and r.dpo.enabled and r.dpo.nll_weight == 0
    assert r.dpo.epochs == 1


def test_autocast_takes_auto_or_a_bool():
    assert load_recipe(None, {"student": {"autocast_bf16": "auto"}}).student.autocast_bf16 == "auto"
    assert load_recipe(None, {"student": {"autocast_bf16": False}}).student.autocast_bf16 is False
    with pytest.raises(RecipeError, match="autocast_bf16"):
        load_recipe(None, {"student": {"autocast_bf16": "fast"}})


# ---- DPO-ST recipes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("method: dpo_st\ndpo_st: {rounds: 2, bogus: 1}\n", "dpo_st.bogus"),
        ("method: dpo_st\ndpo_st: {dpo: {loss: hinge}}\n", "dpo_st.dpo.loss"),
        ("method: dpo_st\ndpo_st: {similarity_threshold: 1.5}\n", "dpo_st.similarity_threshold"),
        ("method: dpo_st\ndpo_st: {sft: {lrr: 1}}\n", "dpo_st.sft.lrr"),
        ("method: dpo_st\ndpo_st: {sft_init: scratch}\n", "dpo_st.sft_init"),
        ("method: dpo_st\ndpo_st: {baselines: [rft]}\n", "dpo_st.baselines.0"),
        ("method: dpo_st\nsft: {lr: 0.1}\n", "'sft' is read by method srit only"),
        ("method: srit\ndpo_st: {rounds: 1}\n", "'dpo_st' is read by methods"),
    ],
)
def test_bad_dpo_st_keys_are_named(tmp_path, text, key):
    path = _write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert key in str(e.value) and str(path) in str(e.value)


def test_dpo_st_defaults_are_the_papers(tmp_path):
    r = load_recipe(_write(tmp_path, "method: dpo_st\n"))
    c, s = r.dpo_st, r.sampling
    assert (c.rounds, s.k, s.temperature, s.max_new_tokens) == (3, 5, 0.7, 300)
    assert (c.similarity_threshold, c.pairs_per_question, c.sft_k) == (0.7, 3, 3)
    assert (c.cap_percentile, c.sft_init) == (90.0, "base")
    assert (c.dpo.loss, c.dpo.beta, c.dpo.nll_weight, c.dpo.lr) == ("sigmoid", 0.1, 0.0, 7e-7)
    assert (c.dpo.batch_size, c.dpo.max_steps, c.sft.lr, c.sft.epochs) == (96, 150, 3e-4, 8)
    assert not hasattr(load_recipe(), "dpo_st")  # the SRIT default recipe has no such section


@pytest.mark.parametrize("name", ["dpo_st.yaml", "dpo_st_gsm8k.yaml"])
def test_shipped_dpo_st_recipes_load(name):
    from selftrain.config import default_recipe_path

    r = load_recipe(default_recipe_path().parent / name)
    assert r.method == "dpo_st" and isinstance(r, DPOSTRecipe)
    assert "self_training" in r.dpo_st.baselines


def test_a_dpo_st_run_dir_saved_in_the_old_layout_still_resumes(tmp_path):
    """Until 2026-12-04 a saved recipe held every method's sections, and DPO-ST's sampler keys
    sat under dpo_st: such a run directory resumes with the same recipe, and only with it."""
    from selftrain.rundir import RunDir, RunDirError

    recipe = load_recipe(default_recipe_path().with_name("dpo_st.yaml"))
    old = recipe.model_dump(mode="json")
    srit = SRITRecipe().model_dump(mode="json")
    for key in ("teacher", "sft", "pairs", "rft", "dpo", "sft_more"):
        old[key] = srit[key]
    s = old.pop("sampling")
    old["sampling"] = {**srit["sampling"], "engine": s["engine"], "vllm": s["vllm"]}
    old["dpo_st"] |= {
        "k": s["k"],
        "temperature": s["temperature"],
        "top_p": s["top_p"],
        "max_new_tokens": s["max_new_tokens"],
        "sampling_batch_size": s["batch_size"],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(old))
    RunDir(tmp_path, recipe)  # no RunDirError
    with pytest.raises(RunDirError, match=r"sampling\.k"):
        RunDir(
            tmp_path,
            load_recipe(default_recipe_path().with_name("dpo_st.yaml"), {"sampling": {"k": 3}}),
        )


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("=1", "with a dotted key, got '=1'"),
        ("sft..lr=1", "with a dotted key, got 'sft..lr=1'"),
        ("sft.lr=[1, 2", "--set sft.lr: not a YAML value"),
    ],
)
def test_cli_overrides_name_what_is_wrong(item, message):
    with pytest.raises(typer.BadParameter, match=re.escape(message)):
        _overrides([item])
    out = CliRunner().invoke(app, ["run", "--set", item])
    assert out.exit_code == 2 and "Traceback" not in out.output


def test_cli_overrides_refuse_a_value_then_a_section():
    with pytest.raises(typer.BadParameter, match="'sft' is set to a value, not a section"):
        _overrides(["sft=1", "sft.lr=2"])


def test_an_unreadable_recipe_is_named(tmp_path):
    binary = tmp_path / "r.yaml"
    binary.write_bytes(b"name: x\n\xff\xfe\n")
    with pytest.raises(RecipeError, match=r"r\.yaml: not UTF-8 text"):
        load_recipe(binary)
    with pytest.raises(RecipeError, match=f"{tmp_path}: cannot read the recipe"):
        load_recipe(tmp_path)  # a directory


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"sampling": {"k": 10**9}}, "sampling.k"),
        ({"sampling": {"max_new_tokens": 10**6}}, "sampling.max_new_tokens"),
        ({"eval": {"max_new_tokens": 10**6}}, "eval.max_new_tokens"),
    ],
)
def test_absurd_sizes_are_refused_before_any_stage(overrides, key):
    with pytest.raises(RecipeError, match=re.escape(f"key '{key}'")):
        load_recipe(None, overrides)


@pytest.mark.parametrize(
    "key",
    [
        "sampling.k",
        "sampling.max_new_tokens",
        "sampling.batch_size",
        "sft.batch_size",
        "sft.micro_batch_size",
        "dpo.batch_size",
        "eval.batch_size",
        "eval.max_new_tokens",
    ],
)
def test_sizes_have_upper_bounds_checked_before_any_stage(key):
    """A typo (1e9) is refused when the recipe loads, naming the key and the bound."""
    section, name = key.split(".")
    with pytest.raises(RecipeError, match=rf"key '{key}': Input should be less than or equal"):
        load_recipe(None, {section: {name: 10**9}})
