"""The recipe's sections that every method shares (pydantic models, unknown keys forbidden).

A recipe file sets any subset of the keys; the rest keep the defaults here.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# sane upper bounds, checked before any stage runs (a typo such as k=1e9 would otherwise fail
# only when the sampler allocates for it, after SFT)
MAX_K = 1024  # paths per question
MAX_NEW_TOKENS = 32768
MAX_BATCH = 16384  # rows decoded together, examples per step: a typo (1e9) is refused up front


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(Strict):
    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # adapt only the top N decoder layers: backward then stops at layer L-N, which made
    # training 1.5x faster (top 15 of SmolLM2's 30); None: every layer
    top_layers: int | None = Field(None, gt=0)


class StudentConfig(Strict):
    # "smollm2-135m-instruct" (the embedded GGUF default), a hub id, a local folder,
    # a .gguf file, or "tiny-llama" / "tiny-qwen2" (random models from a small config).
    model: str = "smollm2-135m-instruct"
    gguf_file: str | None = None  # with a folder or hub id that holds several GGUF files
    # auto: CUDA when present (under accelerate launch, each process's own GPU), else the CPU;
    # or cpu, cuda, cuda:N
    device: str = "auto"
    # weights' dtype; auto: float32 on the CPU; on a GPU, bfloat16 for a frozen base (LoRA)
    # and float32 master weights for full fine-tuning (add autocast_bf16 for bf16 matmuls)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # bf16 autocast for matmuls. auto: on a GPU where bf16 is supported; on a CPU when a
    # one-second probe finds bf16 matmuls faster than fp32 (2x faster on one 2-core AMD EPYC,
    # 1.9x slower on a 2-core Intel Xeon, both with AVX512-BF16)
    autocast_bf16: bool | Literal["auto"] = False
    # recompute activations in the backward pass (non-reentrant, works with LoRA): less memory
    gradient_checkpointing: bool = False
    # QLoRA: a 4-bit NF4 base (bitsandbytes) under bf16 LoRA adapters, as SRIT trained its students
    load_in_4bit: bool = False
    system_prompt: str | None = "Solve the problem step by step."
    lora: LoraConfig = LoraConfig()
    # speed only (the same numbers to float rounding; may change on resume):
    # training runs the frozen bottom layers (LoRA on the top layers only) once per sequence
    # and stage, not once per epoch; their states beyond frozen_cache_mb go to a temporary
    # file in the stage's folder
    frozen_cache: bool = True
    frozen_cache_mb: float = Field(1024, ge=0)
    # decoding computes the KV cache of the prompts' shared start (chat template and system
    # prompt) once per call and starts every batch from it
    shared_prefix: bool = True
    # training and scoring run each LoRA layer as one matmul of the merged weight (fp32 only)
    fused_lora: bool = True

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _qlora_needs_lora(self) -> StudentConfig:
        if self.load_in_4bit and not self.lora.enabled:
            raise ValueError(
                "student.load_in_4bit trains LoRA adapters on a frozen 4-bit base: it needs "
                "student.lora.enabled: true"
            )
        return self


class TaskConfig(Strict):
    name: str = "arithmetic"
    args: dict[str, Any] = {}


class TeacherConfig(Strict):
    """Who writes the demonstrations (selftrain.teachers). ``solver``: the generated task's own
    solver; ``gold``: the dataset's gold rationales; ``api``: any OpenAI-compatible
    chat-completions server (OpenAI, vLLM, llama.cpp, Ollama); ``hf``: a local transformers
    model. The API key is never part of a recipe: only the name of the variable holding it."""

    kind: Literal["solver", "gold", "api", "hf"] = "solver"
    n_questions: int = Field(400, gt=0)  # training questions that get a demonstration
    # demonstrations requested per question (api, hf); each kept one is an SFT example
    n_per_question: int = Field(1, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0: greedy
    top_p: float | None = Field(None, gt=0, le=1)  # None: the server's default
    max_tokens: int | None = Field(512, gt=0)  # api: None sends no limit
    seed: int | None = None  # api: sample i of a question is sent with seed + i
    system_prompt: str | None = None  # system message before the task's zero-shot-CoT prompt
    family: str | None = None  # a label stored with every demonstration: in-family, out-family
    model: str | None = None  # api: the served model's name; hf: a student spec (see student)
    base_url: str = "https://api.openai.com/v1"  # api: everything before /chat/completions
    api_key_env: str | None = "OPENAI_API_KEY"  # api: the variable holding the key (optional)
    concurrency: int = Field(8, gt=0)  # api: requests in flight at once
    timeout_s: float = Field(120.0, gt=0)  # api: per request
    max_retries: int = Field(6, ge=0)  # api: retries after timeouts, dropped connections, 429, 5xx
    backoff_base_s: float = Field(1.0, ge=0)  # api: full-jitter exponential backoff
    backoff_max_s: float = Field(60.0, ge=0)
    extra_body: dict[str, Any] = {}  # api: more request fields (part of the cache key)
    price_per_million_input: float | None = Field(None, ge=0)  # api: for the cost statistic
    price_per_million_output: float | None = Field(None, ge=0)
    # api: the answer cache; None: $SELFTRAIN_CACHE_DIR or ~/.cache/selftrain/teacher
    cache_dir: str | None = None
    batch_size: int = Field(32, gt=0, le=MAX_BATCH)  # hf: rows decoded together

    @model_validator(mode="after")
    def _model_for_kind(self) -> TeacherConfig:
        if self.kind in ("api", "hf") and not self.model:
            raise ValueError(f"teacher.kind {self.kind} needs teacher.model")
        return self


_MICRO = (
    "examples per forward pass in each process; gradients are accumulated up to batch_size "
    "(the effective batch over all processes). None: a process's whole share in one pass"
)


class OptimizerConfig(Strict):
    """What every trainer's optimizer reads: AdamW, lr warm-up then cosine decay, clipping."""

    lr: float = Field(3e-4, gt=0)
    # examples (pairs) per optimizer step, over all processes
    batch_size: int = Field(8, gt=0, le=MAX_BATCH)
    micro_batch_size: int | None = Field(None, gt=0, le=MAX_BATCH, description=_MICRO)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # lr warm-up (cosine schedule after it)
    grad_clip: float = Field(1.0, gt=0)
    # checkpoints inside the stage: every save_every optimizer steps (None or 0: none) into
    # <stage>/checkpoints/, the last keep_last kept; a killed stage resumes from the newest
    save_every: int | None = Field(None, ge=0)
    keep_last: int = Field(2, gt=0)


class SFTConfig(OptimizerConfig):
    """SRIT's stage 1: SFT on the demonstrations, stopped when validation accuracy stalls."""

    max_epochs: int = Field(6, gt=0)
    eval_every: int = Field(50, gt=0)  # optimizer steps between validation checks
    patience: int = Field(2, ge=1)  # checks without a gain in validation accuracy, then stop
    val_questions: int = Field(100, gt=0)
    max_new_tokens: int = Field(96, gt=0, le=MAX_NEW_TOKENS)


class VLLMConfig(Strict):
    """vLLM's engine (``sampling.engine: vllm``): one per process, kept for the whole run."""

    tensor_parallel_size: int = Field(1, gt=0)  # GPUs per engine (one process only)
    # share of the GPU's memory the engine may take; the student trains beside it, and the
    # engine sleeps (frees its memory) while it does
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0)  # None: the model's own
    enforce_eager: bool = False  # no CUDA graphs: starts faster, decodes slower
    prompts_per_call: int = Field(
        512, gt=0
    )  # prompts per generate call; records written after each


class SamplingConfig(Strict):
    """How the student samples its own reasoning paths; read by every method."""

    k: int = Field(4, gt=0, le=MAX_K)  # reasoning paths per question
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, gt=0, le=MAX_NEW_TOKENS)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)  # rows decoded together
    # the decoding engine of every sampling and evaluation stage of the run: builtin (our
    # loop, any device), vllm (pip install selftrain[vllm], a CUDA GPU), auto: vllm where it
    # can run, else builtin
    engine: Literal["builtin", "vllm", "auto"] = "auto"
    vllm: VLLMConfig = VLLMConfig()


class PairsConfig(Strict):
    # correct_vs_wrong: chosen = a correct sampled path (fallback: the teacher's demo),
    # rejected = a wrong one. cot_vs_direct: SRIT's chosen = CoT path, rejected = direct answer.
    policy: Literal["correct_vs_wrong", "cot_vs_direct"] = "correct_vs_wrong"
    max_pairs_per_question: int = Field(2, gt=0)
    teacher_fallback: bool = True
    # penalise a rejected path only up to its first line that departs from the chosen one
    truncate_rejected: bool = True
    direct_instruction: str = "Give only the final answer as a number, with no working."


class RFTConfig(OptimizerConfig):
    """Rejection-sampling fine-tuning (STaR, Zelikman et al. 2022; RFT, Yuan et al. 2023): after
    sampling, the stage-1 model is trained on its own correct, distinct paths (the ground
    truth decides which), then DPO (if enabled) starts from it."""

    enabled: bool = False
    # distinct correct paths kept per question the student solved sometimes but not always,
    # and per question it solved on every path (those teach it less)
    paths_per_question: int = Field(2, ge=1)
    paths_per_easy_question: int = Field(1, ge=0)
    with_demos: bool = False  # train on the teacher's demonstrations too
    lr: float = Field(2e-4, gt=0)
    epochs: int = Field(1, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)


class DPOConfig(OptimizerConfig):
    enabled: bool = True  # SRIT's stage 2; off: the self-refined student is RFT's
    loss: Literal["sigmoid", "ipo", "dpop"] = "sigmoid"
    beta: float = Field(0.1, gt=0)
    dpop_lambda: float = Field(50.0, ge=0)  # DPOP's penalty on a chosen answer losing likelihood
    nll_weight: float = Field(0.0, ge=0)  # length-normalised NLL on the chosen answer
    lr: float = Field(5e-5, gt=0)
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)


class EvalConfig(Strict):
    splits: list[str] = ["in_domain", "out_of_domain", "longer"]
    n: int = Field(200, gt=0)  # questions per split
    n_per_split: dict[str, int] = {}  # overrides n for a split
    base_n: int | None = Field(None, gt=0)  # questions per split for the untrained student
    control_n: int | None = Field(None, gt=0)  # questions per split for the sft_more control
    evaluate_base: bool = True
    max_new_tokens: int = Field(96, gt=0, le=MAX_NEW_TOKENS)
    batch_size: int = Field(64, gt=0, le=MAX_BATCH)
