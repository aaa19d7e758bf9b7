"""A stand-in for the ``vllm`` package, for tests on machines where vLLM cannot be installed.

It has the call signatures of vLLM ~0.33 that selftrain uses (``LLM(model, *, tokenizer,
tensor_parallel_size, dtype, seed, gpu_memory_utilization, enforce_eager, **engine_args)``,
``LLM.generate(prompts, sampling_params, *, use_tqdm, lora_request, ...)``, ``sleep(level)``,
``wake_up(tags)``, ``collective_rpc(method, timeout, args, kwargs)``, ``SamplingParams``,
``TokensPrompt``, ``LoRARequest``) and vLLM's documented behaviour where selftrain relies on
it: a stop token id is kept in ``token_ids`` and named as ``stop_reason``; the model's EOS is
kept too with ``stop_reason`` None; ``n > 1`` with greedy sampling is an error; a LoRA request
needs ``enable_lora`` and a rank within ``max_lora_rank``; sleep level 2 discards the weights,
which are garbage after ``wake_up`` until ``reload_weights``; generating while asleep fails.

It decodes with transformers on the CPU, one token at a time without a cache: greedy output
equals any correct decoder's; sampled output is its own (seeded per request)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

__version__ = "0.33.0+fake"

ENGINE_ARGS = {
    "max_model_len",
    "enable_prefix_caching",
    "enable_sleep_mode",
    "enable_lora",
    "max_lora_rank",
    "max_loras",
    "max_cpu_loras",
    "distributed_executor_backend",
    "max_num_seqs",
    "max_num_batched_tokens",
}
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class SamplingParams:
    def __init__(
        self,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop_token_ids: list[int] | None = None,
        max_tokens: int | None = 16,
        skip_special_tokens: bool = True,
        detokenize: bool = True,
        include_stop_str_in_output: bool = False,
        logprobs: int | None = None,
    ):
        if not 0 <= temperature <= 2:
            raise ValueError(f"temperature must be in [0, 2], got {temperature}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if n > 1 and temperature < 1e-5:
            raise ValueError("n must be 1 when using greedy sampling")
        self.n, self.temperature, self.top_p, self.seed = n, temperature, top_p, seed
        self.stop_token_ids = sorted(set(stop_token_ids or []))
        self.max_tokens = max_tokens
        self.skip_special_tokens, self.detokenize = skip_special_tokens, detokenize


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: Any = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = True


class LLM:
    instances: ClassVar[list[LLM]] = []

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        enforce_eager: bool = False,
        **kwargs: Any,
    ):
        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs.__init__() got unexpected keyword arguments {unknown}")
        if kwargs.get("enable_lora") and kwargs.get("max_lora_rank", 16) not in _LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {_LORA_RANKS}")
        from transformers import AutoModelForCausalLM

        self.kwargs = {"model": model, "dtype": dtype, **kwargs}
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
        self.eos = self.model.config.eos_token_id
        self.calls: list[tuple] = []
        self.awake = {"weights", "kv_cache"}
        self.garbage = False  # weights discarded by sleep(level=2) and not reloaded since
        self._loras: dict[int, torch.nn.Module] = {}
        LLM.instances.append(self)

    # ---- sleep mode --------------------------------------------------------------------------
    def sleep(self, level: int = 1) -> None:
        if not self.kwargs.get("enable_sleep_mode"):
            raise RuntimeError("sleep mode is not enabled")
        self.calls.append(("sleep", level))
        self.awake = set()
        if level == 2:
            self.garbage = True

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", tuple(tags) if tags else None))
        self.awake |= set(tags or ("weights", "kv_cache"))

    def collective_rpc(self, method, timeout=None, args: tuple = (), kwargs=None) -> list:
        kwargs = kwargs or {}
        if method != "reload_weights":
            raise NotImplementedError(method)
        if "weights" not in self.awake:
            raise RuntimeError("reload_weights while the weights are asleep")
        from safetensors.torch import load_file

        folder = Path(kwargs["weights_path"])
        state = {}
        for f in sorted(folder.glob("*.safetensors")):
            state.update(load_file(f))
        self.model.load_state_dict(state, strict=False)
        self.model.tie_weights()
        self.garbage = False
        self.calls.append(("reload_weights", str(folder)))
        return [None]

    # ---- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompts,
        sampling_params=None,
        *,
        use_tqdm: bool = True,
        lora_request=None,
        priority=None,
        tokenization_kwargs=None,
    ) -> list[RequestOutput]:
        if self.awake != {"weights", "kv_cache"}:
            raise RuntimeError("generate while the engine is asleep")
        if self.garbage:
            raise RuntimeError("weights were discarded by sleep(level=2) and never reloaded")
        prompts = prompts if isinstance(prompts, list) else [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params]
        params = params * len(prompts) if len(params) == 1 else params
        if len(params) != len(prompts):
            raise ValueError("one SamplingParams per prompt")
        model = self._model(lora_request)
        self.calls.append(("generate", len(prompts), getattr(lora_request, "lora_int_id", None)))
        outputs = []
        for i, (prompt, sp) in enumerate(zip(prompts, params, strict=True)):
            ids = list(prompt["prompt_token_ids"])
            gen = torch.Generator().manual_seed(sp.seed if sp.seed is not None else i)
            comps = [self._complete(model, ids, sp, gen, j) for j in range(sp.n)]
            outputs.append(RequestOutput(str(i), None, ids, comps))
        return outputs

    def _model(self, lora_request) -> torch.nn.Module:
        if lora_request is None:
            return self.model
        if not self.kwargs.get("enable_lora"):
            raise ValueError("LoRA is not enabled: LLM(enable_lora=True)")
        if lora_request.lora_int_id not in self._loras:
            import json

            from peft import PeftModel

            path = Path(lora_request.lora_path)
            rank = json.loads((path / "adapter_config.json").read_text())["r"]
            if rank > self.kwargs.get("max_lora_rank", 16):
                raise ValueError(f"LoRA rank {rank} is greater than max_lora_rank")
            merged = PeftModel.from_pretrained(copy.deepcopy(self.model), path)
            self._loras[lora_request.lora_int_id] = merged.merge_and_unload().eval()
        return self._loras[lora_request.lora_int_id]

    @torch.no_grad()
    def _complete(self, model, ids, sp: SamplingParams, gen, index: int) -> CompletionOutput:
        out: list[int] = []
        finish, reason = "length", None
        while sp.max_tokens is None or len(out) < sp.max_tokens:
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
            if sp.temperature < 1e-5:
                token = int(logits.argmax())
            else:
                probs = (logits / sp.temperature).softmax(-1)
                ranked, order = probs.sort(descending=True)
                keep = (ranked.cumsum(0) - ranked) < sp.top_p
                choice = torch.multinomial(ranked * keep, 1, generator=gen)
                token = int(order[choice])
            out.append(token)
            if token in sp.stop_token_ids:
                finish, reason = "stop", token
                break
            if token == self.eos:
                finish = "stop"
                break
        return CompletionOutput(index, "", out, finish_reason=finish, stop_reason=reason)
