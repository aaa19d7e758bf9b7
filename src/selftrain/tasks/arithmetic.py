"""Generated GSM8K-style multi-step arithmetic word problems (no download needed).

Each problem starts an entity with some items, then applies ``+ - * /`` steps to the running
count (whole, positive, bounded results). Gold rationales are short GSM8K-format lines such as
``After buying: 12+7=<<12+7=19>>19`` followed by ``#### 19``.

Splits: ``train``, ``validation`` and ``in_domain`` share pool A (names, items, phrasings) and
operand range ``[min_number, max_number]``; ``out_of_domain`` uses a disjoint pool B and
starting values / add-sub operands in ``(max_number, ood_max_number]``; ``longer`` uses pool A
with ``max_steps + 1 .. max_steps + longer_extra`` steps. Multiplication factors and divisors
are always small (``2..max_factor``). No question text appears in two splits.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from selftrain.verify.numbers import extract_number, is_correct_number
from selftrain.tasks.base import Example

__all__ = ["OPS", "SPLITS", "ArithmeticTask"]

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


def _split(words: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in words.split(","))


POOL_A = _Pool(
    names=_split(
        "Mia, Leo, Ava, Noah, Emma, Liam, Zoe, Max, Lily, Sam, Ella, Ben, Ruby, Jack, "
        "Nora, Omar, Ivy, Eli, Maya, Tom"
    ),
    items=_split(
        "apples, pencils, marbles, stickers, cookies, books, cards, shells, balloons, "
        "crayons, buttons, candies, oranges, cupcakes, stamps, toy cars, beads, erasers"
    ),
    setups=(
        "{name} has {n} {item}.",
        "{name} starts with {n} {item}.",
        "{name} owns {n} {item}.",
    ),
    questions=(
        "How many {item} does {name} have now?",
        "How many {item} does {name} have in the end?",
        "How many {item} does {name} end up with?",
    ),
    connectors=("", "Then ", "Next, "),
    steps={
        "add": (
            _Step("{name} buys {n} more {item}.", "After buying"),
            _Step("{name} finds {n} more {item}.", "After finding more"),
            _Step("A friend gives {name} {n} {item}.", "After the gift"),
            _Step("{name} wins {n} {item} at a fair.", "After winning"),
        ),
        "sub": (
            _Step("{name} gives {n} {item} to a friend.", "After giving some away"),
            _Step("{name} loses {n} {item}.", "After losing some"),
            _Step("{name} sells {n} {item}.", "After selling"),
            _Step("{name} trades away {n} {item}.", "After trading"),
        ),
        "mul": (
            _Step("{name} doubles the number of {item}.", "After doubling", (2,)),
            _Step("{name} triples the number of {item}.", "After tripling", (3,)),
            _Step("{name} ends up with {n} times as many {item}.", "With {n} times as many"),
            _Step("Each of the {item} is swapped for {n} new ones.", "After swapping"),
        ),
        "div": (
            _Step("{name} gives away half of the {item}.", "After giving half away", (2,)),
            _Step("{name} keeps only a third of the {item}.", "Keeping a third", (3,)),
            _Step("{name} keeps only a quarter of the {item}.", "Keeping a quarter", (4,)),
            _Step("{name} splits the {item} into {n} equal piles, keeping one.", "After splitting"),
            _Step(
                "{name} shares the {item} equally with {m} friends.",
                "Sharing among {n} people",
                (3, 4, 5, 6, 7, 8, 9),
            ),
        ),
    },
)

POOL_B = _Pool(
    names=_split(
        "Priya, Kenji, Fatima, Mateo, Ingrid, Kwame, Dmitri, Aisha, Tariq, Beatriz, "
        "Hiroshi, Olga, Rafael, Amara, Lars, Mei, Yusuf, Camila"
    ),
    items=_split(
        "liters of juice, kilograms of rice, meters of rope, jars of honey, "
        "bottles of water, packets of seeds, gallons of milk, bags of flour, bricks, "
        "feathers, tickets, tiles"
    ),
    setups=(
        "At first, {name} stores {n} {item}.",
        "{name} begins the week with {n} {item}.",
        "In the morning, {name} holds {n} {item}.",
    ),
    questions=(
        "What is {name}'s final count of {item}?",
        "How many {item} remain with {name} at the end?",
        "Find how many {item} {name} holds after all of this.",
    ),
    connectors=("Afterwards, ", "Later that day, ", "After that, "),
    steps={
        "add": (
            _Step("A delivery brings {name} another {n} {item}.", "With the delivery"),
            _Step("{name} receives {n} extra {item} from a neighbor.", "After receiving"),
            _Step("{name} collects {n} additional {item}.", "After collecting"),
        ),
        "sub": (
            _Step("{name} donates {n} {item} to charity.", "After donating"),
            _Step("A storm ruins {n} of the {item}.", "After the storm"),
            _Step("{name} uses up {n} {item} on a project.", "After using some"),
        ),
        "mul": (
            _Step("A lucky deal leaves {name} with {n} times the {item}.", "After the deal"),
            _Step("{name}'s stock grows {n}-fold.", "After the growth"),
        ),
        "div": (
            _Step(
                "{name} packs the {item} into {n} equal crates and ships all but one.",
                "Keeping one crate",
            ),
            _Step(
                "{name} divides the {item} evenly among {n} teams, keeping one part.",
                "After dividing",
            ),
        ),
    },
)


def _derived_seed(seed: int, split: str) -> int:
    """Stable per-split seed (independent of PYTHONHASHSEED and of other splits)."""
    digest = hashlib.sha256(f"selftrain-arithmetic:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


class ArithmeticTask:
    """Seeded, generated multi-step arithmetic word problems with GSM8K-style rationales."""

    name = "arithmetic"
    kind = "number"
    test_split = "in_domain"
    stop_regex = r"#### *-?\d+\n"

    def max_new_tokens(self) -> int:
        """Decoding budget: the longest gold rationale is well under 128 tokens."""
        return 128

    def __init__(
        self,
        *,
        seed: int = 0,
        n_train: int = 2000,
        n_validation: int = 200,
        n_test: int = 300,
        min_steps: int = 2,
        max_steps: int = 4,
        min_number: int = 2,
        max_number: int = 30,
        ood_max_number: int = 60,
        max_factor: int = 5,
        max_result: int = 999,
        longer_extra: int = 2,
        op_weights: Mapping[str, float] | None = None,
    ) -> None:
        """Configure the generator; splits are built lazily on first :meth:`load`.

        ``min_number..max_number``: start values and add/sub operands (in-domain);
        ``max_number+1..ood_max_number``: the same for ``out_of_domain``;
        ``max_factor``: largest multiplier/divisor; ``max_result``: cap on every intermediate
        value; ``longer_extra``: ``longer`` has ``max_steps+1..max_steps+longer_extra`` steps;
        ``op_weights``: relative frequency of add/sub/mul/div (infeasible ops are skipped).
        """
        weights = dict(_DEFAULT_WEIGHTS if op_weights is None else op_weights)
        if set(weights) - set(OPS) or any(w < 0 for w in weights.values()):
            raise ValueError(f"op_weights must map a subset of {OPS} to non-negative weights")
        if not any(weights.values()):
            raise ValueError("op_weights needs at least one positive weight")
        if min(n_train, n_validation, n_test) < 0:
            raise ValueError("split sizes must be non-negative")
        if not 1 <= min_steps <= max_steps:
            raise ValueError("need 1 <= min_steps <= max_steps")
        if not 1 <= min_number <= max_number < ood_max_number:
            raise ValueError("need 1 <= min_number <= max_number < ood_max_number")
        if max_factor < 2 or longer_extra < 1:
            raise ValueError("need max_factor >= 2 and longer_extra >= 1")
        if max_result < 2 * ood_max_number + 2:
            raise ValueError("max_result is too small for ood_max_number")
        self.seed = seed
        self.sizes = {
            "train": n_train,
            "validation": n_validation,
            "in_domain": n_test,
            "out_of_domain": n_test,
            "longer": n_test,
        }
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.min_number = min_number
        self.max_number = max_number
        self.ood_max_number = ood_max_number
        self.max_factor = max_factor
        self.max_result = max_result
        self.longer_extra = longer_extra
        self.op_weights = {op: float(weights.get(op, 0.0)) for op in OPS}
        self._cache: dict[str, list[Example]] | None = None

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments reproducing this task (for logging a recipe)."""
        return {
            "seed": self.seed,
            "n_train": self.sizes["train"],
            "n_validation": self.sizes["validation"],
            "n_test": self.sizes["in_domain"],
            "min_steps": self.min_steps,
            "max_steps": self.max_steps,
            "min_number": self.min_number,
            "max_number": self.max_number,
            "ood_max_number": self.ood_max_number,
            "max_factor": self.max_factor,
            "max_result": self.max_result,
            "longer_extra": self.longer_extra,
            "op_weights": dict(self.op_weights),
        }

    # -- Task protocol -------------------------------------------------------------------

    def splits(self) -> list[str]:
        """``train``, ``validation``, ``in_domain``, ``out_of_domain``, ``longer``."""
        return list(SPLITS)

    def load(self, split: str, n: int | None = None) -> list[Example]:
        """The first ``n`` examples of ``split`` (all when ``n`` is None)."""
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
