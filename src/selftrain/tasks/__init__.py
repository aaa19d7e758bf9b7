"""Task registry: ``register(name)(factory)``, ``get(name, **kwargs)``, ``names()``."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, TypeVar

from selftrain.tasks.arithmetic import ArithmeticTask
from selftrain.tasks.base import Example, Task

__all__ = ["ArithmeticTask", "Example", "Task", "get", "names", "register"]

F = TypeVar("F", bound=Callable[..., Task])

_REGISTRY: dict[str, Callable[..., Task]] = {}


def register(name: str) -> Callable[[F], F]:
    """Decorator registering a task factory (a class or function) under ``name``."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"task {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


class UnknownTaskError(KeyError, ValueError):
    """A task name that is not registered (a ValueError: bad input, reported in one line)."""

    def __str__(self) -> str:  # a KeyError's str() would quote the message
        return str(self.args[0])


def get(name: str, **kwargs: Any) -> Task:
    """Build the task registered under ``name`` with ``kwargs``.

    ``"base:subset"`` (for example ``"mmlu:stem"`` or ``"math:math500"``) passes
    ``subset="subset"`` to the factory registered as ``base``."""
    base, _, subset = name.partition(":")
    try:
        factory = _REGISTRY[base]
    except KeyError:
        raise UnknownTaskError(
            f"unknown task {base!r} (recipe key task.name, or --tasks); known tasks: "
            f"{', '.join(names())}"
        ) from None
    if subset:
        kwargs = {**kwargs, "subset": subset}
    return factory(**kwargs)


def names() -> list[str]:
    """Sorted names of all registered tasks."""
    return sorted(_REGISTRY)


register("arithmetic")(ArithmeticTask)

# Importing these modules registers the real benchmarks (each module calls ``register``).
for _module in (
    "math_word",
    "competition_math",
    "choice",
    "llm_adapters",
    "yesno",
    "mmlu",
    "custom",
):
    importlib.import_module(f"selftrain.tasks.{_module}")
