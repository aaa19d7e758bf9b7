"""A clean run prints no warnings: decoding with the built-in sampler (transformers 5 deprecated
forward's ``past_key_values`` for ``cache``, a FutureWarning on every call), wrapping a student
in LoRA and reading a LoRA checkpoint back (peft reads transformers' deprecated
``is_gradient_checkpointing``), and saving one whose base has no ``config.json`` beside it (a
``.gguf`` student: peft's "Could not find a config file" UserWarning). Every warning is an
error here, so any of them coming back fails."""

from __future__ import annotations

import shutil
import warnings

import pytest

from selftrain.config import LoraConfig, StudentConfig
from selftrain.eval.suite import load_student
from selftrain.models import Student
from selftrain.models import student as student_module
from selftrain.sampling import SamplingParams, generate


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _sample(student: Student, calculator: bool = True) -> None:
    items = [(i, student.prompt_ids(f"What is {i} + 2?")) for i in range(3)]
    for params in (
        SamplingParams(k=2, greedy=False, max_new_tokens=6, batch_size=4, calculator=calculator),
        SamplingParams(k=1, max_new_tokens=6, batch_size=4),
    ):
        assert sum(len(b) for b in generate(student, items, params)) == 3


@pytest.mark.parametrize("through_adapters", [False, True])
def test_sampling_a_lora_student_warns_nothing(
    tiny_dir, no_warnings, monkeypatch, through_adapters
):
    lora = LoraConfig(enabled=True, r=4)
    student = Student.load(
        StudentConfig(
            model=str(tiny_dir), device="cpu", lora=lora, gradient_checkpointing=through_adapters
        )
    )
    if through_adapters:  # no merged copy: the PEFT model itself decodes
        monkeypatch.setattr(student_module, "_copy_fits", lambda *a: False)
    _sample(student)


def test_a_lora_checkpoint_saved_and_loaded_warns_nothing(tiny_dir, tmp_path, no_warnings):
    base = tmp_path / "base"  # a base without config.json once loaded, as a .gguf student is
    shutil.copytree(tiny_dir, base)
    cfg = StudentConfig(model=str(base), device="cpu", lora=LoraConfig(enabled=True, r=4))
    student = Student.load(cfg)
    (base / "config.json").unlink()
    student.save(tmp_path / "run" / "sft")
    assert (tmp_path / "run" / "sft" / "adapter_config.json").is_file()
    assert not (tmp_path / "run" / "sft" / "adapter_model.bin").exists()
    student.load_weights(tmp_path / "run" / "sft")

    # selftrain eval --adapter: the adapter merged into a LoRA-less student, which then decodes
    shutil.copy(tiny_dir / "config.json", base / "config.json")
    evaluated, label = load_student(str(base), adapter=tmp_path / "run" / "sft", device="cpu")
    assert label == "base+run-sft"
    _sample(evaluated)
