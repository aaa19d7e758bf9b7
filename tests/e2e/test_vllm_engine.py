"""The vLLM engine against a fake ``vllm`` package (tests/e2e/fakevllm/) with vLLM's current call
signatures: vLLM itself does not install on CPU machines, so what runs here is our side of the
calls, not vLLM. The fake decodes with transformers, so greedy output can be compared."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from selftrain.config import OptimizerConfig, VLLMConfig
from selftrain.runtime import Runtime
from selftrain.sampling import BUILTIN, SamplingParams, make_engine

FAKE = Path(__file__).parent / "fakevllm"
QUESTIONS = ["What is 2+3?", "Tom has 5 apples.", "x", "A much longer question about marbles?"]


@pytest.fixture
def vllm(monkeypatch):
    monkeypatch.syspath_prepend(str(FAKE))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    vllm.LLM.instances.clear()
    return vllm


def _lively(s, lora: bool) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in s.model.named_parameters():
            if (lora and "lora_B" in n) or (not lora and p.requires_grad):
                p.add_(torch.randn_like(p) * (0.05 if lora else 0.3))


def _texts(engine, s, items, params) -> dict:
    return {key: texts for batch in engine.generate(s, items, params) for key, texts, _ in batch}


def _items(s, n=4):
    return [(f"q{i}", s.prompt_ids(QUESTIONS[i % 4] + " " * i)) for i in range(n)]


@pytest.mark.parametrize("lora", [True, False])
def test_greedy_output_equals_the_builtin_engines(vllm, make_student, tmp_path, lora):
    s = make_student(lora=lora)
    _lively(s, lora)
    engine = make_engine("vllm", VLLMConfig(prompts_per_call=3), Runtime.local(), tmp_path)
    assert engine.name == "vllm"
    items = _items(s, 5)
    params = SamplingParams(k=2, max_new_tokens=12)  # greedy: one request, copied k times
    batches = list(engine.generate(s, items, params))
    assert [len(b) for b in batches] == [3, 2]  # prompts_per_call: records per call
    ours = {key: texts for b in batches for key, texts, _ in b}
    assert ours == _texts(BUILTIN, s, items, params)
    llm = vllm.LLM.instances[0]
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["enable_prefix_caching"]
    assert llm.kwargs.get("enable_lora", False) == lora
    assert ("generate", 3, 1 if lora else None) in llm.calls
    assert llm.calls[-1] == ("sleep", 1 if lora else 2)  # asleep while the student trains
    engine.close()


def test_a_student_without_a_folder_has_its_base_written_once(vllm, tmp_path):
    """A GGUF or tiny student: its base weights (adapters left out) are written for vLLM."""
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student

    s = Student.load(StudentConfig(model="tiny-llama", lora=LoraConfig(r=4)))
    _lively(s, lora=True)
    engine = make_engine("vllm", VLLMConfig(), Runtime.local(), tmp_path)
    items, params = _items(s), SamplingParams(max_new_tokens=10)
    assert _texts(engine, s, items, params) == _texts(BUILTIN, s, items, params)
    from safetensors import safe_open

    with safe_open(tmp_path / "base" / "model.safetensors", "pt") as f:
        names = list(f.keys())
    assert names and not any("lora" in n or "base_layer" in n for n in names)
    assert vllm.LLM.instances[0].kwargs["max_lora_rank"] == 8  # r=4, rounded up to vLLM's


def test_one_engine_follows_a_lora_student_through_training(vllm, make_student, tmp_path):
    """Each state of the adapters is a LoRARequest of its own (a checkpoint on disk, or a
    folder written for it); the base is loaded once and the engine sleeps at level 1."""
    from selftrain.training.sft import train_sft

    s = make_student(lora=True)
    _lively(s, lora=True)
    engine = make_engine("vllm", VLLMConfig(), Runtime.local(), tmp_path / "vllm")
    items, params = _items(s), SamplingParams(max_new_tokens=10)
    assert _texts(engine, s, items, params) == _texts(BUILTIN, s, items, params)
    data = [(p, s.completion_ids("#### 5")) for _, p in items]
    train_sft(s, data, OptimizerConfig(lr=5e-2, batch_size=4), max_steps=5)
    after = _texts(engine, s, items, params)
    assert after == _texts(BUILTIN, s, items, params)
    s.save(tmp_path / "ckpt")  # a saved checkpoint is read where it is
    assert _texts(engine, s, items, params) == after
    assert len(vllm.LLM.instances) == 1
    llm = vllm.LLM.instances[0]
    assert [c[2] for c in llm.calls if c[0] == "generate"] == [1, 2, 3]
    assert ("sleep", 1) in llm.calls and ("wake_up", None) in llm.calls
    written = sorted(p.name for p in (tmp_path / "vllm" / "weights").iterdir())
    assert written == ["0002"]  # the folder written for the first state was removed


def test_a_fully_fine_tuned_student_is_reloaded_after_sleep(vllm, make_student, tmp_path):
    from selftrain.training.sft import train_sft

    s = make_student()
    _lively(s, lora=False)
    engine = make_engine("vllm", VLLMConfig(), Runtime.local(), tmp_path / "vllm")
    items, params = _items(s), SamplingParams(max_new_tokens=10)
    first = _texts(engine, s, items, params)
    assert first == _texts(BUILTIN, s, items, params)
    data = [(p, s.completion_ids("#### 5")) for _, p in items]
    train_sft(s, data, OptimizerConfig(lr=1e-2, batch_size=4), max_steps=5)
    s.save(tmp_path / "ckpt")
    after = _texts(engine, s, items, params)
    assert after == _texts(BUILTIN, s, items, params) and after != first
    calls = vllm.LLM.instances[0].calls
    i = calls.index(("sleep", 2))
    assert calls[i + 1 : i + 4] == [
        ("wake_up", ("weights",)),
        ("reload_weights", str(tmp_path / "ckpt")),
        ("wake_up", ("kv_cache",)),
    ]


def test_sampled_paths_depend_on_the_question_not_the_batch(vllm, make_student, tmp_path):
    s = make_student()
    _lively(s, lora=False)
    items = _items(s, 4)
    params = SamplingParams(k=3, greedy=False, temperature=1.0, max_new_tokens=8, seed=5)
    runtime = Runtime.local()
    together = _texts(make_engine("vllm", VLLMConfig(), runtime, tmp_path / "a"), s, items, params)
    one_by_one = make_engine("vllm", VLLMConfig(prompts_per_call=1), runtime, tmp_path / "b")
    alone = _texts(one_by_one, s, items[2:], params)
    assert all(len(t) == 3 for t in together.values())
    assert alone == {k: together[k] for k in ("q2", "q3")}
    other = SamplingParams(k=3, greedy=False, temperature=1.0, max_new_tokens=8, seed=6)
    assert _texts(one_by_one, s, items[2:], other) != alone


def test_the_calculator_resubmits_with_the_forced_result(vllm, tokenizer):
    """After a token that opens a result (``=``) the request stops; the calculator's result is
    appended and the sequence goes back with a smaller budget."""
    from selftrain.sampling import CalculatorHook
    from selftrain.sampling.vllm import _rounds

    text = "So 12*3=<<12*3=99>>99\n#### 99"
    script = tokenizer.encode(text, add_special_tokens=False)
    hook = CalculatorHook(tokenizer)
    eos = tokenizer.eos_token_id

    class Scripted:
        """Writes ``script`` after whatever it is given, honouring the stop token ids."""

        def __init__(self):
            self.requests = []

        def generate(self, prompts, params, *, use_tqdm=True, lora_request=None):
            outs = []
            for prompt, sp in zip(prompts, params, strict=True):
                done = prompt["prompt_token_ids"][2:]
                self.requests.append((list(done), sp.max_tokens))
                rest = [*script[len(done) :], eos]
                stop = next((i for i, t in enumerate(rest) if t in sp.stop_token_ids), None)
                new = rest[: stop + 1] if stop is not None else rest[: sp.max_tokens]
                reason = new[-1] if stop is not None and new[-1] != eos else None
                outs.append(
                    vllm.RequestOutput(
                        "0",
                        None,
                        [],
                        [vllm.CompletionOutput(0, "", new, None, None, "stop", reason)],
                    )
                )
            return outs

    llm = Scripted()
    params = SamplingParams(max_new_tokens=len(script) + 2, calculator=True)
    out = _rounds(llm, [("q", [1, 5])], params, hook, eos, None)
    assert tokenizer.decode(out[(0, 0)]) == "So 12*3=<<12*3=36>>99\n#### 99"
    assert len(llm.requests) == 3  # stops after "12*3=" and "<<12*3=", then to the end
    assert llm.requests[-1][1] == params.max_new_tokens - len(llm.requests[-1][0])


def _vllm_recipe(tiny_dir):
    from selftrain.config import load_recipe

    return load_recipe(
        None,
        {
            "student": {"model": str(tiny_dir), "lora": {"enabled": True, "r": 4}},
            "task": {
                "name": "arithmetic",
                "args": {"n_train": 40, "n_validation": 10, "n_test": 8},
            },
            "teacher": {"n_questions": 12},
            "sft": {"max_epochs": 1, "eval_every": 2, "val_questions": 4, "max_new_tokens": 8},
            "sampling": {
                "n_questions": 6,
                "offset": 0,
                "k": 2,
                "max_new_tokens": 8,
                "engine": "vllm",
                "vllm": {"prompts_per_call": 2},
            },
            "rft": {"with_demos": False},
            "dpo": {"enabled": True, "batch_size": 2},
            "eval": {"n": 5, "max_new_tokens": 8, "splits": ["in_domain"]},
        },
    )


def test_an_srit_run_decodes_every_stage_with_one_vllm_engine(vllm, tiny_dir, tmp_path):
    from selftrain.pipeline import srit

    run = tmp_path / "run"
    metrics = srit.run(_vllm_recipe(tiny_dir), run)
    assert len(vllm.LLM.instances) == 1
    samples = [json.loads(x) for x in (run / "samples.jsonl").open()]
    assert len(samples) == 12 and len({r["id"] for r in samples}) == 6
    assert {"base", "sft", "dpo", "sft_more"} <= set(metrics)
    assert vllm.LLM.instances[0].kwargs["model"] == str(tiny_dir)  # read where it is
    from vllm.distributed.parallel_state import CLEANUPS

    assert CLEANUPS  # the engine was freed at the end of the run


def test_a_sampling_stage_on_vllm_killed_after_a_batch_resumes(
    vllm, tiny_dir, tmp_path, monkeypatch
):
    """Records are written after every generate call (prompts_per_call), so a kill loses at
    most the call in flight and the rerun samples only the questions left, as they would
    have been sampled."""
    from selftrain.pipeline import srit
    from selftrain.stages import sample

    real = sample.generate

    def die_after_one(student, items, params, engine=None):
        it = real(student, items, params, engine)
        yield next(it)
        raise KeyboardInterrupt

    recipe, run = _vllm_recipe(tiny_dir), tmp_path / "run"
    monkeypatch.setattr(sample, "generate", die_after_one)
    with pytest.raises(KeyboardInterrupt):
        srit.run(recipe, run)
    partial = [json.loads(x) for x in (run / "samples.jsonl").open()]
    assert len(partial) == 4  # 2 questions x k=2
    monkeypatch.setattr(sample, "generate", real)
    srit.run(recipe, run)
    samples = [json.loads(x) for x in (run / "samples.jsonl").open()]
    assert samples[:4] == partial and len(samples) == 12
    assert set(Counter(r["id"] for r in samples).values()) == {2}  # none lost, none twice
    whole = tmp_path / "whole"
    srit.run(recipe, whole)
    uninterrupted = [json.loads(x) for x in (whole / "samples.jsonl").open()]
    key = lambda r: (r["id"], r["text"])  # noqa: E731
    assert sorted(map(key, samples)) == sorted(map(key, uninterrupted))
