"""``selftrain export``: a run's LoRA checkpoint merged and written as a transformers folder
(sharded), its model card, the hub's errors offline, and the GGUF file read by llama.cpp."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from selftrain.cli import app

METRICS = {
    "sft_training": {"examples": 24, "steps": 6},
    "base": {"in_domain": {"accuracy": 0.25, "n": 4, "ci95": [0.0459, 0.6994]}},
    "sft": {"in_domain": {"accuracy": 0.5, "n": 4, "ci95": [0.15, 0.85]}},
    "compare": {
        "sft_vs_base": {"in_domain": {"diff": 0.25, "ci95": [-0.1, 0.5], "p_value": 0.5, "n": 4}}
    },
}


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory) -> Path:
    """A run directory as `selftrain run` leaves it: recipe.yaml, state.json, metrics.json and
    a trained (non-zero) LoRA adapter in sft/model."""
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student

    run = tmp_path_factory.mktemp("runs") / "x"
    student = Student.load(
        StudentConfig(model=str(tiny_dir), device="cpu", lora=LoraConfig(enabled=True, r=4))
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in student.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    student.save(run / "sft" / "model")
    recipe = {
        "name": "x",
        "method": "srit",
        "student": {"model": str(tiny_dir), "system_prompt": "Solve it.", "lora": {"r": 4}},
        "task": {"name": "arithmetic", "args": {"n_train": 24}},
    }
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "state.json").write_text("{}")
    (run / "metrics.json").write_text(json.dumps(METRICS))
    return run


@pytest.fixture(scope="module")
def merged(tiny_dir, run_dir):
    """The tiny base with the run's adapter merged, as `selftrain eval --adapter` applies it."""
    from selftrain.eval.suite import load_student

    student, _ = load_student(str(tiny_dir), adapter=run_dir / "sft", device="cpu")
    return student.model.eval()


def _cli(argv: list[str], code: int = 0):
    result = CliRunner().invoke(app, [str(a) for a in argv])
    assert result.exit_code == code, result.output[-2000:]
    return result


def _errors(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_export_round_trips_through_transformers(run_dir, merged, tiny_dir, tmp_path):
    """The folder loads with AutoModelForCausalLM (three shards at --max-shard-size 200KB)
    and gives the merged student's logits; the model card has the recipe, the data and the
    accuracy table with intervals, this model's row in bold."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    out = tmp_path / "exported"
    result = _cli(["export", run_dir / "sft", out, "--max-shard-size", "200KB"])
    assert f"to {out}" in result.output
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    assert not any("lora" in k for k in index["weight_map"])
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("What is 12 + 35?").input_ids])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, merged(ids).logits, atol=1e-5)
        base = AutoModelForCausalLM.from_pretrained(tiny_dir)(ids).logits
    assert not torch.allclose(model(ids).logits, base, atol=1e-3)  # the adapter is in it
    gen = GenerationConfig.from_pretrained(out)
    assert gen.eos_token_id == tok.eos_token_id and gen.do_sample is False

    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert "stage `sft` of run `x`" in card and "task: `arithmetic` (n_train=24)" in card
    assert "| base | in_domain | 25.0 | 4.6-69.9 | 4 |" in card
    assert "| **sft** | **in_domain** | **50.0** | **15.0-85.0** | **4** |" in card
    assert "sft_vs_base, in_domain: +25.0 [-10.0, +50.0]" in card
    assert "system prompt 'Solve it.'" in card and "```yaml\nmethod: srit" in card


def test_a_sharded_export_loads_back_in_eval(run_dir, tiny_dir, tmp_path):
    """`selftrain eval` reads a sharded full-model folder: as --adapter on the base (its
    weights replace the base's), and as --model."""
    out = tmp_path / "sharded"
    _cli(["export", run_dir / "sft", out, "--max-shard-size", "200KB"])
    assert not (out / "model.safetensors").exists()
    common = ["--tasks", "arithmetic", "--limit", "2", "--max-new-tokens", "4", "--device", "cpu"]
    common += ["--precision", "fp32"]
    _cli(["eval", "--model", tiny_dir, "--adapter", out, *common, "--out", tmp_path / "a"])
    _cli(["eval", "--model", out, *common, "--out", tmp_path / "b"])
    a = json.loads((tmp_path / "a" / "results.json").read_text())["tasks"]["arithmetic"]
    b = json.loads((tmp_path / "b" / "results.json").read_text())["tasks"]["arithmetic"]
    assert a["n"] == b["n"] == 2 and a["accuracy"] == b["accuracy"]


def test_bad_exports_are_one_line(run_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = _cli(["export", run_dir / "sft", out], code=2)
    assert _errors(result) == [
        f"error: {out}: exists and is not empty; give another folder, or --overwrite to replace it"
    ]
    assert (out / "keep.txt").exists()
    result = _cli(["export", run_dir / "sft", tmp_path / "o", "--dtype", "int8"], code=2)
    assert "--dtype takes auto, float32, float16, bfloat16" in _errors(result)[0]
    result = _cli(["export", run_dir / "sft", tmp_path / "o", "--gguf", "q4"], code=2)
    assert "--gguf takes f32, f16, bf16" in _errors(result)[0]
    result = _cli(["export", run_dir, run_dir / "sft" / "x"], code=2)
    assert "no checkpoint in it" in _errors(result)[0]
    result = _cli(["export", run_dir / "sft", run_dir / "sft" / "model" / "x"], code=2)
    assert "must be outside the checkpoint" in _errors(result)[0]
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.tmp").exists()


def test_push_to_hub_offline_is_one_line(run_dir, tmp_path, monkeypatch):
    """Offline (HF_HUB_OFFLINE): refused before anything is written. Hub unreachable: the
    export is kept and the line says how to upload it later."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = _cli(["export", run_dir / "sft", tmp_path / "a", "--push-to-hub", "me/m"], code=2)
    assert len(_errors(result)) == 1 and "HF_HUB_OFFLINE is set" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "a").exists()
    result = _cli(["export", run_dir / "sft", tmp_path / "a", "--push-to-hub", "a/b/c"], code=2)
    assert "not a repository id" in _errors(result)[0]

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    result = _cli(["export", run_dir / "sft", tmp_path / "b", "--push-to-hub", "me/m"], code=2)
    assert _errors(result) == [
        f"error: --push-to-hub me/m: the hub is not reachable (ConnectError); the export is "
        f"in {tmp_path / 'b'}; upload it later with: hf upload me/m {tmp_path / 'b'}"
    ]
    assert (tmp_path / "b" / "config.json").exists()


def test_gguf_runs_in_llama_cpp(run_dir, merged, tmp_path):
    """The GGUF file, read by llama.cpp: the same tokens for a text, the torch model's logits
    (f32, to 1e-3) and the same greedy answer."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np

    from selftrain.models import load_tokenizer

    out = tmp_path / "g"
    _cli(["export", run_dir / "sft", out, "--gguf", "f32"])
    tok = load_tokenizer(str(out))
    text = "<|im_start|>user\nWhat is 12 + 345?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(
        str(out / "g-f32.gguf"), n_ctx=128, logits_all=True, verbose=False, n_threads=1
    )
    try:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
        with torch.no_grad():
            ours = merged(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(theirs - ours).max() < 1e-3
        llm.reset()
        answer = list(itertools.islice(llm.generate(ids, temp=0.0), 12))
        with torch.no_grad():
            greedy = merged.generate(
                torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12
            )[0, len(ids) :].tolist()
        assert answer == greedy
    finally:
        llm.close()


def test_gguf_refuses_other_architectures(tokenizer, tmp_path):
    from selftrain.export.gguf_file import GGUFExportError, write_gguf
    from selftrain.models import tiny_model

    model = tiny_model("qwen2", len(tokenizer))
    with pytest.raises(GGUFExportError, match="this model is 'qwen2'"):
        write_gguf(model, tmp_path, tmp_path / "m.gguf", "f16")


def test_gguf_llama3_rotary_scaling_and_untied_head(tokenizer, tmp_path):
    """Llama 3's rotary scaling (a rope_freqs tensor) and an output head of its own: llama.cpp
    gives transformers' logits over 150 positions, past the scaling's original context."""
    llama_cpp = pytest.importorskip("llama_cpp")
    import numpy as np
    from transformers import AutoModelForCausalLM, LlamaConfig

    from selftrain.export.gguf_file import write_gguf

    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}
    rope |= {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
    rope["original_max_position_embeddings"] = 64
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, rope_parameters=rope,
    )  # fmt: skip
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    tokenizer.save_pretrained(tmp_path)
    write_gguf(model, tmp_path, tmp_path / "m.gguf", "f32")
    ids = tokenizer(" ".join(["hello world number 12345"] * 20)).input_ids[:150]
    llm = llama_cpp.Llama(
        str(tmp_path / "m.gguf"), n_ctx=256, logits_all=True, verbose=False, n_threads=1
    )
    try:
        llm.eval(ids)
        theirs = np.array(llm.scores[: len(ids)])
    finally:
        llm.close()
    with torch.no_grad():
        ours = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(theirs - ours).max() < 1e-3


def test_the_card_names_a_dpo_st_round(tmp_path):
    """DPO-ST's metrics (the warm-up, each round's SFT and DPO models) become rows named by
    their stage folders; the exported round's DPO model is the bold row, its training record
    the data section's numbers."""
    from selftrain.export.card import model_card
    from selftrain.export.write import Source

    result = {"accuracy": 0.5, "n": 2, "ci95": [0.0945, 0.9055]}
    metrics = {
        "warmup": {"eval": {"test": result}, "training": {"examples": 8}},
        "dpo_st": {"rounds": {"1": {"eval": {"test": result}, "eval_dpo": {"test": result},
                                    "dpo_training": {"pairs": 6, "steps": 3}}}},
        "calculator": {"warmup": {"test": {"with": 0.5, "without": 0.0, "n": 2}}},
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({"method": "dpo_st", "task": {}}))
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    source = Source(tmp_path, True, "HuggingFaceTB/SmolLM2-135M", None, tmp_path, "dpo_st/r1/dpo")
    card = model_card(source, "me/m", "float32")
    assert "base_model: HuggingFaceTB/SmolLM2-135M" in card
    assert "| warmup | test | 50.0 | 9.4-90.5 | 2 |" in card
    assert "| dpo_st/r1/sft | test |" in card
    assert "| **dpo_st/r1/dpo** | **test** |" in card
    assert "- pairs: 6\n- steps: 3" in card and "calculator" not in card.split("## Use")[0]
    assert 'from_pretrained("me/m")' in card
