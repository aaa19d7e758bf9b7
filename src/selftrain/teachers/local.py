"""Teachers that need no network: the generated task's solver, a dataset's gold rationales, and
a local transformers model decoded with selftrain's own batched sampler."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from selftrain.tasks.base import Task
from selftrain.teachers.base import Completion, Request, Teacher, TeacherError

if TYPE_CHECKING:
    from selftrain.config import TeacherConfig
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
        cfg: TeacherConfig,
        *,
        seed: int = 0,
        stop: str | None = None,
        gguf_file: str | None = None,
        calculator: bool = True,
    ):
        """Model, sampling parameters and batch size come from ``cfg`` (a recipe's ``teacher``
        section); ``seed`` is used where ``cfg.seed`` is None, ``stop`` ends a completion at a
        match, and ``calculator`` fills in <<expr= annotations as the student's decoding does."""
        super().__init__()
        self.cfg = cfg
        self.identity = f"hf:{cfg.model or ''}"
        self.family = cfg.family
        self.max_tokens = cfg.max_tokens or 512
        self.seed = cfg.seed if cfg.seed is not None else seed
        self.stop = stop
        self.gguf_file = gguf_file
        self.calculator = calculator
        self._student: Student | None = None

    def _load(self) -> Student:
        """The model, loaded on first use (without LoRA; the system prompt is per call)."""
        if self._student is None:
            from selftrain.config import LoraConfig, StudentConfig
            from selftrain.models import Student

            cfg = StudentConfig(
                model=self.cfg.model or "",
                gguf_file=self.gguf_file,
                system_prompt=None,
                lora=LoraConfig(enabled=False),
            )
            self._student = Student.load(cfg)
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
        system = systems.pop()
        student = self._load()
        k = max(len(rs) for rs in chats.values())
        params = SamplingParams(
            k=k,
            greedy=self.cfg.temperature == 0,
            temperature=self.cfg.temperature or 1.0,
            top_p=self.cfg.top_p or 1.0,
            max_new_tokens=self.max_tokens,
            batch_size=max(self.cfg.batch_size, k),
            seed=self.seed,
            stop=self.stop,
            calculator=self.calculator,
        )
        items = [(user, student.chat_ids(user, system)) for user in chats]
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
