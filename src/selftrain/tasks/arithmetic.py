"""Generated GSM8K-style multi-step arithmetic word problems (no download needed).

Each problem starts an entity with some items, then applies ``+ - * /`` steps to the running
count (whole, positive, bounded results). Gold rationales are short GSM8K-format lines such as
``After buying: 12+7=<<12+7=19>>19`` followed by ``#### 19``.

Splits: ``train``, ``validation`` and ``in_domain`` share pool A (names, items, phrasings) and
operand range ``[min_number, max_number]``; ``out_of_domain`` uses a disjoint pool B and
starting values / add-sub operands in ``(max_number, ood_max_number]``; ``longer`` uses pool A
with ``max_steps + 1 .. max_steps + longer_extra`` steps. Multiplication factors and divisors
are always small (``2..max_factor``). No question text appears in two splits. The pools'
vocabulary is data: ``arithmetic_pools.json`` beside this module.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, ClassVar

from selftrain.tasks.base import Example
from selftrain.verify.numbers import extract_number, is_correct_number

__all__ = ["OPS", "POOL_A", "POOL_B", "SPLITS", "ArithmeticTask"]

OPS = ("add", "sub", "mul", "div")
SPLITS = ("train", "validation", "in_domain", "out_of_domain", "longer")
# Test splits are generated first so they do not change when n_train / n_validation change.
_GENERATION_ORDER = ("in_domain", "out_of_domain", "longer", "validation", "train")
_SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
_DEFAULT_WEIGHTS = {"add": 0.3, "sub": 0.3, "mul": 0.2, "div": 0.2}


@dataclass(frozen=True)
class _Step:
    """One phrasing of an operation: story sentence and rationale lead-in.

    Placeholders: ``{name}``, ``{item}``, ``{n}`` (operand), ``{m}`` (operand - 1).
    ``only`` restricts the operands the phrasing fits (empty: any).
    """

    text: str
    lead: str
    only: tuple[int, ...] = ()


@dataclass(frozen=True)
class _Pool:
    """Surface vocabulary of one distribution (names, items, phrasings)."""

    names: tuple[str, ...]
    items: tuple[str, ...]
    setups: tuple[str, ...]
    questions: tuple[str, ...]
    connectors: tuple[str, ...]
    steps: Mapping[str, tuple[_Step, ...]]


def _pool(data: dict[str, Any]) -> _Pool:
    """A pool from its entry in ``arithmetic_pools.json``."""
    steps = {
        op: tuple(_Step(s["text"], s["lead"], tuple(s.get("only", ()))) for s in phrasings)
        for op, phrasings in data["steps"].items()
    }
    lists = ("names", "items", "setups", "questions", "connectors")
    return _Pool(**{key: tuple(data[key]) for key in lists}, steps=steps)


_POOLS = json.loads(
    resources.files("selftrain.tasks").joinpath("arithmetic_pools.json").read_text("utf-8")
)
POOL_A = _pool(_POOLS["A"])  # train, validation, in_domain, longer
POOL_B = _pool(_POOLS["B"])  # out_of_domain


def _derived_seed(seed: int, split: str) -> int:
    """Stable per-split seed (independent of PYTHONHASHSEED and of other splits)."""
    digest = hashlib.sha256(f"selftrain-arithmetic:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


@dataclass(eq=False, kw_only=True)
class ArithmeticTask:
    """Seeded, generated multi-step arithmetic word problems with GSM8K-style rationales.

    The fields configure the generator; splits are built lazily on first :meth:`load`.
    """

    name: ClassVar[str] = "arithmetic"
    kind: ClassVar[str] = "number"
    test_split: ClassVar[str] = "in_domain"
    stop_regex: ClassVar[str] = r"#### *-?\d+\n"

    seed: int = 0
    # Split sizes: each of in_domain, out_of_domain and longer has n_test problems.
    n_train: int = 2000
    n_validation: int = 200
    n_test: int = 300
    # Steps per problem; ``longer`` has max_steps+1 .. max_steps+longer_extra steps.
    min_steps: int = 2
    max_steps: int = 4
    longer_extra: int = 2
    # Start values and add/sub operands: min_number..max_number in domain,
    # max_number+1..ood_max_number out of domain.
    min_number: int = 2
    max_number: int = 30
    ood_max_number: int = 60
    # Largest multiplier/divisor, and the cap on every intermediate value.
    max_factor: int = 5
    max_result: int = 999
    # Relative frequency of add/sub/mul/div (infeasible ops are skipped); None: 0.3/0.3/0.2/0.2.
    op_weights: Mapping[str, float] | None = None
    sizes: dict[str, int] = field(init=False, repr=False)  # split -> number of problems
    _cache: dict[str, list[Example]] | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        """Check the settings; fill in ``op_weights`` (one float per op) and ``sizes``."""
        weights = dict(_DEFAULT_WEIGHTS if self.op_weights is None else self.op_weights)
        if set(weights) - set(OPS) or any(w < 0 for w in weights.values()):
            raise ValueError(f"op_weights must map a subset of {OPS} to non-negative weights")
        if not any(weights.values()):
            raise ValueError("op_weights needs at least one positive weight")
        if min(self.n_train, self.n_validation, self.n_test) < 0:
            raise ValueError("split sizes must be non-negative")
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps")
        if not 1 <= self.min_number <= self.max_number < self.ood_max_number:
            raise ValueError("need 1 <= min_number <= max_number < ood_max_number")
        if self.max_factor < 2 or self.longer_extra < 1:
            raise ValueError("need max_factor >= 2 and longer_extra >= 1")
        if self.max_result < 2 * self.ood_max_number + 2:
            raise ValueError("max_result is too small for ood_max_number")
        self.op_weights = {op: float(weights.get(op, 0.0)) for op in OPS}
        tests = dict.fromkeys(("in_domain", "out_of_domain", "longer"), self.n_test)
        self.sizes = {"train": self.n_train, "validation": self.n_validation, **tests}

    def max_new_tokens(self) -> int:
        """Decoding budget: the longest gold rationale is well under 128 tokens."""
        return 128

    # -- Task protocol -------------------------------------------------------------------

    def splits(self) -> list[str]:
        """``train``, ``validation``, ``in_domain``, ``out_of_domain``, ``longer``."""
        return list(SPLITS)

    def load(self, split: str | None = None, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of ``split`` (all when ``n`` is None; default split: the
        test split, ``in_domain``, as for the benchmark tasks: ``selftrain eval`` without
        ``--split``)."""
        split = split or self.test_split
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if n is not None and n < 0:
            raise ValueError("n must be non-negative")
        if self._cache is None:
            self._cache = self._generate_all()
        examples = self._cache[split]
        return list(examples if n is None else examples[:n])

    def prompt(self, example: Example) -> str:
        """The question text (chat templating happens elsewhere)."""
        return example.question

    def extract(self, completion: str) -> str | None:
        """Normalised numeric answer in ``completion`` (see :func:`extract_number`)."""
        return extract_number(completion)

    def is_correct(self, completion: str, example: Example) -> bool:
        """Whether the completion's number equals the gold answer."""
        return is_correct_number(completion, example.answer)

    def demonstration(self, example: Example) -> str:
        """Gold rationale for ``example`` (the solver acting as the default teacher)."""
        if example.rationale is None:
            raise ValueError(f"example {example.id} has no rationale")
        return example.rationale

    # -- generation ----------------------------------------------------------------------

    def _generate_all(self) -> dict[str, list[Example]]:
        seen: set[str] = set()
        out: dict[str, list[Example]] = {}
        for split in _GENERATION_ORDER:
            rng = random.Random(_derived_seed(self.seed, split))
            examples: list[Example] = []
            size = self.sizes[split]
            attempts = 0
            while len(examples) < size:
                attempts += 1
                if attempts > 50 * size + 1000:
                    raise RuntimeError(f"cannot generate {size} unique {split!r} problems")
                example = self._make(rng, split, len(examples))
                if example.question not in seen:
                    seen.add(example.question)
                    examples.append(example)
            out[split] = examples
        return out

    def _make(self, rng: random.Random, split: str, index: int) -> Example:
        """Generate one problem of ``split`` with id number ``index``."""
        if split == "out_of_domain":
            pool, lo, hi = POOL_B, self.max_number + 1, self.ood_max_number
        else:
            pool, lo, hi = POOL_A, self.min_number, self.max_number
        if split == "longer":
            n_steps = rng.randint(self.max_steps + 1, self.max_steps + self.longer_extra)
        else:
            n_steps = rng.randint(self.min_steps, self.max_steps)
        name, item = rng.choice(pool.names), rng.choice(pool.items)
        value = rng.randint(lo, hi)
        sentences = [rng.choice(pool.setups).format(name=name, n=value, item=item)]
        lines: list[str] = []
        ops: list[str] = []
        operands = [value]
        for _ in range(n_steps):
            op, n = self._pick_step(rng, value, lo, hi)
            result = _apply(op, value, n)
            phrasing = rng.choice([s for s in pool.steps[op] if not s.only or n in s.only])
            fields = {"name": name, "item": item, "n": n, "m": n - 1}
            sentence = phrasing.text.format(**fields)
            connector = rng.choice(pool.connectors)
            if connector and not sentence.startswith(name):
                sentence = _lower_first(sentence)
            sentences.append(connector + sentence)
            expr = f"{value}{_SYMBOL[op]}{n}"
            lead = phrasing.lead.format(**fields)
            lines.append(f"{lead}: {expr}=<<{expr}={result}>>{result}")
            ops.append(op)
            operands.append(n)
            value = result
        sentences.append(rng.choice(pool.questions).format(name=name, item=item))
        lines.append(f"#### {value}")
        return Example(
            id=f"arith-{split}-{index:05d}",
            question=" ".join(sentences),
            answer=str(value),
            rationale="\n".join(lines),
            meta={
                "split": split,
                "steps": n_steps,
                "ops": ops,
                "operands": operands,
                "name": name,
                "item": item,
            },
        )

    def _pick_step(self, rng: random.Random, value: int, lo: int, hi: int) -> tuple[str, int]:
        """Choose a feasible operation and operand for the running ``value``."""
        factors = range(2, self.max_factor + 1)
        choices: dict[str, list[int]] = {
            "add": list(range(lo, min(hi, self.max_result - value) + 1)),
            "sub": list(range(lo, min(hi, value - 2) + 1)),
            "mul": [f for f in factors if value * f <= self.max_result],
            "div": [d for d in factors if value % d == 0 and value // d >= 2],
        }
        feasible = [op for op in OPS if choices[op] and self.op_weights[op] > 0]
        if feasible:
            op = rng.choices(feasible, weights=[self.op_weights[o] for o in feasible])[0]
        else:  # e.g. only 'sub' weighted but the value is too small: ignore the weights
            op = rng.choice([o for o in OPS if choices[o]])
        return op, rng.choice(choices[op])


def _apply(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "sub":
        return a - b
    if op == "mul":
        return a * b
    return a // b
