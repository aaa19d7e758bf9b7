"""Teachers that need no network: the generated task's solver, a dataset's gold rationales, and
a local transformers model decoded with selftrain's own batched sampler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from selftrain.tasks.base import Task
from selftrain.teachers.base import Completion, Request, Teacher, TeacherError

if TYPE_CHECKING:
    from selftrain.models import Student

__all__ = ["GoldTeacher", "HFTeacher", "SolverTeacher"]


class GoldTeacher(Teacher):
    """The dataset's gold rationale of each question (None where it has none)."""

    identity = "gold"
    deterministic = True

    async def complete(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        for r in requests:
            yield Completion(r, text=r.example.rationale)


class SolverTeacher(Teacher):
    """The generated task's solver (``task.demonstration``)."""

    identity = "solver"
    deterministic = True

    def __init__(self, task: Task):
        super().__init__()
        demonstrate = getattr(task, "demonstration", None)
        if demonstrate is None:
            raise TeacherError(f"task '{task.name}' has no solver; use teacher.kind: gold")
        self._demonstrate = demonstrate

    async def complete(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        for r in requests:
            yield Completion(r, text=self._demonstrate(r.example))


class HFTeacher(Teacher):
    """A local transformers model (any student spec: the embedded SmolLM2, a folder, a .gguf
    file, a hub id), sampled in batches with :func:`selftrain.sampling.generate`. The system
    message of the requests becomes the chat template's system prompt."""

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.0,
        top_p: float | None = None,
        max_tokens: int = 512,
        batch_size: int = 32,
        seed: int = 0,
        stop: str | None = None,
        family: str | None = None,
        gguf_file: str | None = None,
        calculator: bool = True,
    ):
        super().__init__()
        self.model = model
        self.calculator = calculator  # fill in <<expr= annotations as the student's decoding does
        self.gguf_file = gguf_file
        self.identity = f"hf:{model}"
        self.family = family
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.stop = stop
        self._student: Student | None = None
        self._system: str | None = None

    def _load(self, system: str | None) -> Student:
        if self._student is None or system != self._system:
            from selftrain.config import LoraConfig, StudentConfig
            from selftrain.models import Student

            cfg = StudentConfig(
                model=self.model,
                gguf_file=self.gguf_file,
                system_prompt=system,
                lora=LoraConfig(enabled=False),
            )
            if self._student is None:
                self._student = Student.load(cfg)
            else:  # same weights, another system prompt
                self._student.cfg = cfg
            self._system = system
        return self._student

    async def complete(self, requests: Sequence[Request]) -> AsyncIterator[Completion]:
        from selftrain.sampling import SamplingParams, generate

        if not requests:
            return
        chats: dict[str, list[Request]] = {}  # the k samples of one prompt are decoded together
        systems = set()
        for r in requests:
            system, user = _split_messages(r.messages)
            systems.add(system)
            chats.setdefault(user, []).append(r)
        if len(systems) > 1:
            raise TeacherError("a local teacher takes one system prompt per call")
        student = self._load(systems.pop())
        k = max(len(rs) for rs in chats.values())
        params = SamplingParams(
            k=k,
            greedy=self.temperature == 0,
            temperature=self.temperature or 1.0,
            top_p=self.top_p or 1.0,
            max_new_tokens=self.max_tokens,
            batch_size=max(self.batch_size, k),
            seed=self.seed,
            stop=self.stop,
            calculator=self.calculator,
        )
        items = [(user, student.prompt_ids(user)) for user in chats]
        lengths = {user: len(ids) for user, ids in items}
        for batch in generate(student, items, params):
            for user, texts, counts in batch:
                for r, text, n in zip(chats[user], texts, counts, strict=False):
                    yield Completion(
                        r,
                        text=text,
                        prompt_tokens=lengths[user],
                        completion_tokens=n,
                        finish_reason="length" if n >= self.max_tokens else "stop",
                    )


def _split_messages(messages: list[dict[str, Any]]) -> tuple[str | None, str]:
    """(system prompt or None, the user turn) of a single-turn chat."""
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    users = [m["content"] for m in messages if m["role"] == "user"]
    if len(users) != 1 or len(messages) != len(users) + (system is not None):
        raise TeacherError("a local teacher takes one user turn and an optional system prompt")
    return system, users[0]
