"""Task registry: ``register(name)(factory)``, ``get(name, **kwargs)``, ``names()``."""

from __future__ import annotations

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


def get(name: str, **kwargs: Any) -> Task:
    """Build the task registered under ``name`` with ``kwargs``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None
    return factory(**kwargs)


def names() -> list[str]:
    """Sorted names of all registered tasks."""
    return sorted(_REGISTRY)


register("arithmetic")(ArithmeticTask)
