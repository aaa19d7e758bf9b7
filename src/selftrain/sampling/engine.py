"""The sampler's interface: :class:`SamplingParams`, the :class:`Engine` protocol, the
built-in engine (sampling/decoder.py), :func:`generate`, and :func:`make_engine`, which picks
an engine by name."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from selftrain.models import Student
from selftrain.sampling.hooks import make_hooks

# (key, prompt token ids) in; (key, k completion texts, k completion token counts) out
Items = Sequence[tuple[Any, list[int]]]
Results = list[tuple[Any, list[str], list[int]]]


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples: k completions per prompt, drawn (or argmax), within a budget."""

    k: int = 1
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 96
    # rows the model decodes together (k samples share rows while they agree; at most
    # 2 * batch_size sequences are in flight)
    batch_size: int = 64
    seed: int = 0
    calculator: bool = False  # fill in ``<<expr=`` annotations (see selftrain.sampling.calculator)
    stop: str | None = None  # regex: a row stops once its text matches it at the end


class Engine(Protocol):
    """A decoding engine: the built-in loop or vLLM (sampling/vllm.py)."""

    name: str

    def generate(self, student: Student, items: Items, params: SamplingParams) -> Iterator[Results]:
        """Completions of ``items`` from the student's current weights, per batch."""
        ...

    def close(self) -> None: ...


class BuiltinEngine:
    """The decoding loop of sampling/decoder.py on the student's own device."""

    name = "builtin"

    def generate(self, student: Student, items: Items, params: SamplingParams) -> Iterator[Results]:
        from selftrain.sampling.decoder import decode_stream  # imports transformers

        if not items:
            return
        per_batch = max(1, params.batch_size // params.k)
        order = sorted(range(len(items)), key=lambda i: len(items[i][1]))
        hook, stop = make_hooks(student.tokenizer, params)
        prompts = [items[i][1] for i in order]
        keys = [items[i][0] for i in order]
        results: Results = []
        with student.inference() as run:
            stream = decode_stream(
                run.model,
                prompts,
                params,
                student.eos_id,
                student.pad_id,
                keys,
                hook,
                stop,
                run.context,
                shared_prefix=student.cfg.shared_prefix,
            )
            for j, seqs in stream:
                key = keys[j]
                results.append((key, [student.decode(s) for s in seqs], [len(s) for s in seqs]))
                if len(results) >= per_batch:
                    yield results
                    results = []
            if results:
                yield results

    def close(self) -> None:
        pass


BUILTIN = BuiltinEngine()


def generate(
    student: Student, items: Items, params: SamplingParams, engine: Engine | None = None
) -> Iterator[Results]:
    """Yield ``(key, k completion texts, k completion token counts)`` for each
    ``(key, prompt_ids)`` item, in lists of about ``batch_size // k`` items as they finish,
    decoded by ``engine`` (the built-in loop by default)."""
    yield from (engine or BUILTIN).generate(student, items, params)


def vllm_available() -> bool:
    """Whether vLLM is installed and a CUDA device is there for it."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def make_engine(name: str, cfg: Any, runtime: Any, workdir: Path) -> Engine:
    """The engine a run decodes with (recipe key ``sampling.engine``): ``builtin``, ``vllm``,
    or ``auto`` (vLLM where it can run: installed, and the student on a CUDA device).
    ``cfg`` is the recipe's ``sampling.vllm``; ``workdir`` a folder for vLLM's files."""
    if name == "auto":
        name = "vllm" if vllm_available() and runtime.device.type == "cuda" else "builtin"
    if name == "builtin":
        return BUILTIN
    if name != "vllm":
        raise ValueError(f"unknown sampling engine '{name}' (builtin, vllm, auto)")
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "sampling.engine is vllm, but vllm is not installed: pip install 'selftrain[vllm]' "
            "on a machine with a CUDA GPU, or set sampling.engine: builtin"
        )
    from selftrain.sampling.vllm import VLLMEngine

    return VLLMEngine(cfg, runtime, workdir)
