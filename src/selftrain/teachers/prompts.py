"""The teacher's prompt: the task's question, its answer-format instruction and the zero-shot
chain-of-thought trigger, as SRIT prompts its teachers."""

from __future__ import annotations

from selftrain.tasks.base import Example, Task
from selftrain.tasks.benchmark import COT_TRIGGER, BenchmarkTask

__all__ = ["INSTRUCTIONS", "cot_prompt", "messages"]

# the final line each kind of answer asks for (BenchmarkTask.instruction, for other tasks)
INSTRUCTIONS = {
    "number": "End with 'The answer is N.' where N is a number.",
    "choice": "End with 'The answer is X.' where X is the letter of the correct choice.",
    "yesno": "End with 'The answer is yes.' or 'The answer is no.'",
    "math": "Put the final answer in \\boxed{}.",
}


def cot_prompt(task: Task, example: Example) -> str:
    """Zero-shot CoT: the question (with its options), the answer format, the CoT trigger,
    whatever prompting style the task was built with."""
    if isinstance(task, BenchmarkTask):
        body, instruction = task.body(example), task.instruction()
    else:
        body = task.prompt(example)
        instruction = INSTRUCTIONS.get(getattr(task, "kind", "number"), INSTRUCTIONS["number"])
    return f"{body}\n{instruction}\n{COT_TRIGGER}"


def messages(task: Task, example: Example, system_prompt: str | None = None) -> list[dict]:
    """The chat sent to a teacher: an optional system message, then the CoT prompt."""
    chat = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*chat, {"role": "user", "content": cot_prompt(task, example)}]
