"""Batched generation of k completions per prompt, by one of two engines (sampling/engine.py).

- ``builtin`` (:class:`BuiltinEngine`, sampling/decoder.py): our decoding loop, on the student's
  device, CPU or GPU. Prompts are sorted by length; the k samples of a prompt are decoded
  together (sharing batch rows while they agree), in a preallocated KV cache
  (sampling/kv_cache.py).
- ``vllm`` (sampling/vllm.py): vLLM on a GPU, one engine for the whole run.

Both hand a prompt back once all k samples have finished, in lists of about a batch, so callers
write results per batch and a rerun skips the prompts already done. A sample's random draws
depend only on (seed, item key, path, step) (sampling/draws.py), not on the batch or the
process that decodes it. Hooks (sampling/hooks.py) fill in calculator results
(sampling/calculator.py) and end a sample at a stop pattern.
"""

from selftrain.sampling.engine import (
    BUILTIN,
    BuiltinEngine,
    Engine,
    SamplingParams,
    generate,
    make_engine,
    vllm_available,
)
from selftrain.sampling.hooks import CalculatorHook, StopHook

__all__ = [
    "BUILTIN",
    "BuiltinEngine",
    "CalculatorHook",
    "Engine",
    "SamplingParams",
    "StopHook",
    "generate",
    "make_engine",
    "vllm_available",
]
