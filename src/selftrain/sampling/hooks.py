"""Hooks a decoder runs after every token: the calculator, which forces a result into an open
``<<expr=`` annotation, and the stop pattern, which ends a row once its answer line is done."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from selftrain.sampling import calculator

if TYPE_CHECKING:
    from selftrain.sampling.engine import SamplingParams


class StopHook:
    """Stops a sequence whose text matches ``pattern`` at its end (checked only after tokens
    holding a newline or a colon, so the tail is rarely decoded)."""

    def __init__(self, tokenizer: Any, pattern: str):
        self.tokenizer = tokenizer
        self.pattern = re.compile(f"(?:{pattern})$", re.IGNORECASE)
        vocab = tokenizer.get_vocab()
        self.triggers = {
            i for i in vocab.values() if any(c in tokenizer.decode([i]) for c in "\n:")
        }

    def done(self, tokens: list[int]) -> bool:
        if not tokens or tokens[-1] not in self.triggers:
            return False
        return self.pattern.search(self.tokenizer.decode(tokens[-96:])) is not None


class CalculatorHook:
    """Forces a calculator's result into sequences that end in an open ``<<expr=``.

    Only tokens whose text ends in ``=`` can open a result, so the tail of a sequence is
    decoded (and the expression parsed) only after one of those."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        vocab = tokenizer.get_vocab()
        self.triggers = {i for i in vocab.values() if tokenizer.decode([i]).endswith("=")}

    def forced(self, tokens: list[int]) -> list[int]:
        """Token ids to force after ``tokens`` (empty when nothing is to be filled in)."""
        if not tokens or tokens[-1] not in self.triggers:
            return []
        text = self.tokenizer.decode(tokens[-calculator.MAX_EXPRESSION_CHARS :])
        result = calculator.fill(text)
        if result is None:
            return []
        return self.tokenizer.encode(result, add_special_tokens=False)


def make_hooks(
    tokenizer: Any, params: SamplingParams
) -> tuple[CalculatorHook | None, StopHook | None]:
    """The calculator and stop hooks ``params`` ask for (``None`` where not), made for one
    decode: each decodes the tokenizer's vocabulary once (0.1-0.2 s for SmolLM2's)."""
    hook = CalculatorHook(tokenizer) if params.calculator else None
    stop = StopHook(tokenizer, params.stop) if params.stop else None
    return hook, stop
