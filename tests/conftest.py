"""Shared fixtures: a tiny random Llama with SmolLM2's real tokenizer, saved as a local folder
(no hub), so tests exercise the real chat template, BOS/EOS and pad == eos. Every test under
tests/e2e is marked ``e2e`` (as is a unit test that passes over a whole benchmark file), so
``pytest -m "not e2e and not llama_server"`` runs the fast unit tests alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

E2E = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def tokenizer():
    from selftrain.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tokenizer):
    from selftrain.models import tiny_model

    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_model("llama", len(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture
def make_student(tiny_dir):
    from selftrain.config import LoraConfig, StudentConfig
    from selftrain.models import Student

    def make(lora: bool = False, **kwargs) -> Student:
        kwargs.setdefault("device", "cpu")  # the CPU tests stay there on a GPU machine too
        cfg = StudentConfig(model=str(tiny_dir), lora=LoraConfig(enabled=lora, r=8), **kwargs)
        return Student.load(cfg)

    return make
