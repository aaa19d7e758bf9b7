"""vLLM as a decoding engine: one engine per process, started at the first decode of a run and
kept until its end, asleep (its GPU memory freed) while the student trains.

How the engine gets the student's current weights: from a folder on disk, the checkpoint the
stage just saved (``Student.weights_dir``), or, where the weights changed since (validation in
the middle of SFT), a folder written for it under the run directory's ``vllm/``.

- **LoRA students: a ``LoRARequest`` per checkpoint.** The engine loads the base model once
  (``enable_lora``); each adapter folder is a request of its own id, so nothing but the
  adapter (megabytes) moves per stage, and every evaluation of a saved stage reads the
  adapter that is already on disk. Between decodes the engine sleeps at level 1 (weights
  offloaded to CPU memory, KV cache freed) and wakes with the same base.
- **Full fine-tuning: sleep and wake with a weight reload.** Between decodes the engine sleeps
  at level 2 (weights and KV cache discarded); before the next it wakes its weights, reloads
  them from the checkpoint folder (``collective_rpc("reload_weights", weights_path=...)``) and
  wakes its KV cache. Chosen over a process per stage because a stage then costs a weight
  load (seconds) instead of an engine start (CUDA graphs, memory profiling: a minute or more
  for a 7B), and over pushing tensors into the model runner because it needs only vLLM's
  public worker calls.

Under ``accelerate launch`` each process runs its own engine (tensor_parallel_size 1) on its
own GPU with vLLM's ``external_launcher`` backend, as TRL's colocated mode does, and decodes
its share of the questions. The calculator works in rounds: a request stops after any token
that can open a result (``=``), the forced result is appended and the sequence is submitted
again (the prefix cache keeps that cheap); a stop pattern is applied to the finished tokens.

vLLM does not install on the machines this was written on: tests/e2e/test_vllm_engine.py runs this
code against a fake ``vllm`` package with the current call signatures (tests/e2e/fakevllm/).
"""

from __future__ import annotations

import gc
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from selftrain.models import DEFAULT_STUDENT, Student
from selftrain.sampling.draws import path_keys, request_seed, stable_key
from selftrain.sampling.engine import Items, Results, SamplingParams
from selftrain.sampling.hooks import CalculatorHook, StopHook, make_hooks

# vLLM's max_lora_rank takes these values only
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMEngine:
    name = "vllm"

    def __init__(self, cfg: Any, runtime: Any, workdir: Path):
        if runtime.distributed and cfg.tensor_parallel_size != 1:
            raise ValueError(
                "sampling.vllm.tensor_parallel_size must be 1 under accelerate launch: each "
                "process runs its own engine on its own GPU"
            )
        self.cfg, self.runtime, self.workdir = cfg, runtime, Path(workdir)
        self.llm: Any = None
        self.lora = False
        self._lora_ids: dict[str, int] = {}  # adapter folder -> its request id
        self._holds: Path | None = None  # full fine-tuning: the folder of the engine's weights
        self._asleep = False
        self._scratch: Path | None = None  # the last folder written only for the engine
        self._writes = 0

    # ---- the engine's life -------------------------------------------------------------------
    def _start(self, student: Student) -> Any:
        from vllm import LLM

        base = self._base_folder(student)
        kwargs: dict[str, Any] = {
            "tokenizer": str(base),
            "dtype": _dtype_name(student),
            "seed": 0,  # requests carry their own seeds
            "tensor_parallel_size": self.cfg.tensor_parallel_size,
            "gpu_memory_utilization": self.cfg.gpu_memory_utilization,
            "enforce_eager": self.cfg.enforce_eager,
            # the prompts' shared start (chat template, system prompt) computed once
            "enable_prefix_caching": student.cfg.shared_prefix,
            "enable_sleep_mode": True,
        }
        if self.cfg.max_model_len:
            kwargs["max_model_len"] = self.cfg.max_model_len
        if student.lora:
            rank = next((r for r in _LORA_RANKS if r >= student.cfg.lora.r), None)
            if rank is None:
                raise ValueError(f"student.lora.r {student.cfg.lora.r}: vLLM serves r <= 512")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        if self.runtime.distributed:
            kwargs["distributed_executor_backend"] = "external_launcher"
        self.llm = LLM(str(base), **kwargs)
        self.lora = student.lora
        self._holds = None if student.lora else base
        return self.llm

    def _base_folder(self, student: Student) -> Path | str:
        """What the engine loads at start: the student's own folder or hub id, or (a GGUF
        file, a tiny test model) its base weights written once under ``workdir/base``."""
        spec = student.cfg.model
        path = Path(spec).expanduser()
        if spec != DEFAULT_STUDENT and path.suffix != ".gguf" and not spec.startswith("tiny-"):
            return str(path) if path.is_dir() else spec  # a folder, or a hub id
        folder = self.workdir / "base"
        if self.runtime.is_main and not (folder / "config.json").exists():
            _save_base(student, folder)
        self.runtime.barrier()
        return folder

    def close(self) -> None:
        """Free the engine (vllm#3281: deleting it is not enough on every version)."""
        if self.llm is None:
            return
        self.llm = None
        gc.collect()
        if not self.runtime.distributed:  # it would tear down the launcher's process group too
            try:
                from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            except ImportError:
                pass
            else:
                cleanup_dist_env_and_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- weights -------------------------------------------------------------------------
    def _weights(self, student: Student) -> Path:
        """A folder holding the student's current weights: its checkpoint, else a new folder
        under ``workdir/weights`` (the one written before it is removed)."""
        if student.weights_dir is not None and Path(student.weights_dir).exists():
            return Path(student.weights_dir)
        previous = self._scratch
        self._writes += 1
        self._scratch = self.workdir / "weights" / f"{self._writes:04d}"
        if self.runtime.is_main:
            shutil.rmtree(self._scratch, ignore_errors=True)  # left by an earlier process
        student.save(self._scratch)
        if previous is not None and self.runtime.is_main:
            shutil.rmtree(previous, ignore_errors=True)
        return self._scratch

    def _wake(self, student: Student, weights: Path) -> Any:
        llm = self.llm or self._start(student)
        if self.lora:
            if self._asleep:
                llm.wake_up()
        else:
            if self._asleep:
                llm.wake_up(tags=["weights"])
            if self._asleep or self._holds != weights:
                llm.collective_rpc("reload_weights", kwargs={"weights_path": str(weights)})
                self._holds = weights
            if self._asleep:
                llm.wake_up(tags=["kv_cache"])
        self._asleep = False
        return llm

    def _sleep(self) -> None:
        if self.llm is not None and not self._asleep:
            self.llm.sleep(level=1 if self.lora else 2)
            self._asleep = True

    def _lora_request(self, weights: Path) -> Any:
        from vllm.lora.request import LoRARequest

        name = str(weights.resolve())
        if name not in self._lora_ids:
            self._lora_ids[name] = len(self._lora_ids) + 1  # ids start at 1
        return LoRARequest(f"adapter-{self._lora_ids[name]}", self._lora_ids[name], name)

    # ---- decoding --------------------------------------------------------------------------
    def generate(self, student: Student, items: Items, params: SamplingParams) -> Iterator[Results]:
        """:meth:`selftrain.sampling.BuiltinEngine.generate` on vLLM: the same prompts as token
        ids, k samples each, the same temperature, top-p, budget, EOS and hooks; one list per
        ``prompts_per_call`` items."""
        if params.max_new_tokens < 1:
            if items:
                yield [(key, [""] * params.k, [0] * params.k) for key, _ in items]
            return
        # every process comes here, with or without questions of its own: saving weights and
        # starting the engine have collectives
        weights = self._weights(student)
        llm = self._wake(student, weights)
        lora = self._lora_request(weights) if self.lora else None
        hook, stop = make_hooks(student.tokenizer, params)
        try:
            step = self.cfg.prompts_per_call
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                outputs = _rounds(llm, chunk, params, hook, student.eos_id, lora)
                results: Results = []
                for i, (key, _) in enumerate(chunk):
                    k = 1 if params.greedy else params.k
                    seqs = [_cut_at_stop(outputs[(i, j)], stop) for j in range(k)]
                    seqs = seqs * params.k if params.greedy else seqs
                    results.append((key, [student.decode(s) for s in seqs], [len(s) for s in seqs]))
                yield results
        finally:
            self._sleep()


def _rounds(
    llm: Any,
    items: Items,
    params: SamplingParams,
    hook: CalculatorHook | None,
    eos_id: int,
    lora: Any,
) -> dict[tuple[int, int], list[int]]:
    """Token ids of sample j of item i, ``{(i, j): tokens}`` (EOS left out), generated in
    rounds that stop after a calculator trigger (see the module's docstring). Every request is
    seeded from its item's key, path and round, so its samples do not depend on the batch."""
    from vllm import SamplingParams as VParams
    from vllm.inputs import TokensPrompt

    k = 1 if params.greedy else params.k
    keys = [stable_key(key) for key, _ in items]
    stops = sorted({eos_id, *(hook.triggers if hook else ())})

    def vparams(n: int, budget: int, seed: int):
        return VParams(
            n=n,
            temperature=0.0 if params.greedy else params.temperature,
            top_p=1.0 if params.greedy else params.top_p,
            max_tokens=budget,
            seed=None if params.greedy else seed,
            stop_token_ids=stops,
            skip_special_tokens=False,
            detokenize=False,
        )

    outputs: dict[tuple[int, int], list[int]] = {
        (i, j): [] for i in range(len(items)) for j in range(k)
    }
    # round 0: one request per prompt with n = k; later rounds: one per unfinished sample
    requests: list[tuple[int, int | None]] = [(i, None) for i in range(len(items))]
    for round_ in range(params.max_new_tokens + 1):
        if not requests:
            break
        prompts, sps = [], []
        for i, j in requests:
            so_far = [] if j is None else outputs[(i, j)]
            key = keys[i] if j is None else path_keys(keys[i], k)[j] + round_
            prompts.append(TokensPrompt(prompt_token_ids=items[i][1] + so_far))
            budget = params.max_new_tokens - len(so_far)
            sps.append(vparams(k if j is None else 1, budget, request_seed(params.seed, key)))
        done = llm.generate(prompts, sps, use_tqdm=False, lora_request=lora)
        nxt = []
        for (i, j), res in zip(requests, done, strict=True):
            for c, comp in enumerate(res.outputs):
                slot = (i, c if j is None else j)
                if _extend(outputs[slot], comp, hook, eos_id, params.max_new_tokens):
                    nxt.append(slot)
        requests = nxt
    return outputs


def _extend(
    tokens: list[int], comp: Any, hook: CalculatorHook | None, eos_id: int, max_new_tokens: int
) -> bool:
    """Add a vLLM completion's tokens (EOS left out) to ``tokens``, and the calculator's result
    where it stopped at a trigger; whether the sample goes on in another round."""
    new = list(comp.token_ids)
    trigger = hook is not None and comp.stop_reason in hook.triggers
    if trigger and (not new or new[-1] != comp.stop_reason):
        new.append(comp.stop_reason)  # the stop token, where vLLM leaves it out
    # EOS: in the ids, or named as the stop reason, or a plain "stop" (model's EOS)
    ended = eos_id in new or comp.stop_reason == eos_id
    ended |= comp.finish_reason == "stop" and comp.stop_reason is None
    if eos_id in new:
        new = new[: new.index(eos_id)]
    tokens.extend(new)
    del tokens[max_new_tokens:]
    if ended or not trigger or len(tokens) >= max_new_tokens:
        return False
    tokens.extend(hook.forced(tokens)[: max_new_tokens - len(tokens)])
    return len(tokens) < max_new_tokens


def _cut_at_stop(tokens: list[int], stop: StopHook | None) -> list[int]:
    """``tokens`` up to where the stop pattern first matches at the end (all if never)."""
    if stop is None:
        return tokens
    for n in range(1, len(tokens) + 1):
        if stop.done(tokens[:n]):
            return tokens[:n]
    return tokens


def _dtype_name(student: Student) -> str:
    """The engine's dtype: bf16 where the student computes in bf16 (bf16 weights, or fp32
    master weights under ``autocast_bf16``: the engine loads the checkpoint cast to bf16)."""
    if student.cfg.autocast_bf16:
        return "bfloat16"
    for p in student.model.parameters():
        if p.is_floating_point():
            return {torch.bfloat16: "bfloat16", torch.float16: "float16"}.get(p.dtype, "float32")
    return "auto"


def _save_base(student: Student, folder: Path) -> None:
    """The student's base weights (LoRA adapters left out) as a transformers folder."""
    model = student.model.get_base_model() if student.lora else student.model
    state = {
        name.replace(".base_layer", ""): t
        for name, t in model.state_dict().items()
        if "lora_" not in name
    }
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state)
    student.tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
