"""Recipe schema (pydantic) and YAML loading with errors that name the key and the file.

Every knob of a run lives here; a recipe file sets any subset of them and the rest keep
the defaults below, which are the embedded default recipe's values.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraConfig(_Strict):
    enabled: bool = True
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    # adapt only the top N decoder layers: backward then stops at layer L-N, which made
    # training 1.5x faster (top 15 of SmolLM2's 30); None: every layer
    top_layers: int | None = Field(None, gt=0)


class StudentConfig(_Strict):
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


class TaskConfig(_Strict):
    name: str = "arithmetic"
    args: dict[str, Any] = {}


class TeacherConfig(_Strict):
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
    batch_size: int = Field(32, gt=0)  # hf: rows decoded together

    @model_validator(mode="after")
    def _model_for_kind(self) -> TeacherConfig:
        if self.kind in ("api", "hf") and not self.model:
            raise ValueError(f"teacher.kind {self.kind} needs teacher.model")
        return self


_MICRO = (
    "examples per forward pass in each process; gradients are accumulated up to batch_size "
    "(the effective batch over all processes). None: a process's whole share in one pass"
)


class OptimizerConfig(_Strict):
    """What every trainer's optimizer reads: AdamW, lr warm-up then cosine decay, clipping."""

    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(8, gt=0)  # examples (pairs) per optimizer step, over all processes
    micro_batch_size: int | None = Field(None, gt=0, description=_MICRO)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)  # lr warm-up (cosine schedule after it)
    grad_clip: float = Field(1.0, gt=0)


class SFTConfig(OptimizerConfig):
    """SRIT's stage 1: SFT on the demonstrations, stopped when validation accuracy stalls."""

    max_epochs: int = Field(6, gt=0)
    eval_every: int = Field(50, gt=0)  # optimizer steps between validation checks
    patience: int = Field(2, ge=1)  # checks without a gain in validation accuracy, then stop
    val_questions: int = Field(100, gt=0)
    max_new_tokens: int = Field(96, gt=0)


class VLLMConfig(_Strict):
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


class SamplingConfig(_Strict):
    n_questions: int = Field(300, gt=0)  # training questions the student answers itself
    # where those questions start in the train split: 0 re-asks the demonstrated questions;
    # teacher.n_questions asks only questions the teacher never demonstrated (no fallback)
    offset: int = Field(0, ge=0)
    k: int = Field(4, gt=0)  # reasoning paths per question
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(64, gt=0)  # rows decoded together
    # the decoding engine of every sampling and evaluation stage of the run: builtin (our
    # loop, any device), vllm (pip install selftrain[vllm], a CUDA GPU), auto: vllm where it
    # can run, else builtin. Read by every method.
    engine: Literal["builtin", "vllm", "auto"] = "auto"
    vllm: VLLMConfig = VLLMConfig()


class PairsConfig(_Strict):
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


class EvalConfig(_Strict):
    splits: list[str] = ["in_domain", "out_of_domain", "longer"]
    n: int = Field(200, gt=0)  # questions per split
    n_per_split: dict[str, int] = {}  # overrides n for a split
    base_n: int | None = Field(None, gt=0)  # questions per split for the untrained student
    control_n: int | None = Field(None, gt=0)  # questions per split for the sft_more control
    evaluate_base: bool = True
    max_new_tokens: int = Field(96, gt=0)
    batch_size: int = Field(64, gt=0)


class DPOSTSFTConfig(OptimizerConfig):
    """SFT in DPO-ST: the warm-up on gold rationales and every round's SFT step (fixed epochs,
    no early stopping). Defaults: the paper's Flan-T5 values."""

    batch_size: int = Field(96, gt=0)
    epochs: int = Field(8, gt=0)
    warmup_epochs: int | None = Field(None, gt=0)  # epochs of the warm-up SFT; None: epochs
    max_steps: int | None = Field(None, gt=0)  # caps every SFT run's optimizer steps
    weight_decay: float = Field(0.01, ge=0)


class DPOSTDPOConfig(DPOConfig):
    """The DPO step of DPO-ST (reference: the round's SFT model). Defaults: the paper's Flan-T5
    values (sigmoid loss, beta 0.1, batch 96, 150 steps, lr 7e-7, no NLL term)."""

    lr: float = Field(7e-7, gt=0)
    batch_size: int = Field(96, gt=0)
    max_steps: int | None = Field(150, gt=0)  # None: ``epochs`` passes over the pairs
    weight_decay: float = Field(0.01, ge=0)


class EvalTaskConfig(_Strict):
    """Another task's split evaluated after every round (e.g. out-of-domain benchmarks)."""

    name: str  # registry name: multiarith, asdiv, svamp, ...
    label: str | None = None  # column name in tables; None: the task name
    args: dict[str, Any] = {}  # task constructor arguments (data_dir, style, ...)
    split: str = "test"
    n: int | None = Field(None, gt=0)  # first n questions; None: all


class DPOSTConfig(_Strict):
    """DPO-augmented self-training (Wang, Li & Lu, ACL 2024); defaults are the paper's."""

    rounds: int = Field(3, gt=0)
    # arms trained from the same warm-up besides ``method`` (dpo_st or self_training)
    baselines: list[Literal["dpo_st", "self_training"]] = []
    n_questions: int | None = Field(None, gt=0)  # training questions; None: all but the dev set
    # the first N training questions keep their gold rationale (warm-up data, gold in every
    # pool); the rest are answer-only, learned from self-samples alone (self-training's
    # semi-supervised setting). None: every question has its gold rationale (the paper)
    gold_questions: int | None = Field(None, gt=0)
    dev_holdout: int = Field(0, ge=0)  # last N train questions held out as split "dev"
    # a quick run: at most this many training questions and questions per evaluation set
    limit: int | None = Field(None, gt=0)
    # DPO step: the round's SFT model samples k rationales per question
    k: int = Field(5, gt=0)
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(300, gt=0)
    sampling_batch_size: int = Field(64, gt=0)  # rows decoded together
    similarity_threshold: float = Field(0.7, gt=0, le=1)  # token-set Jaccard above it: duplicate
    pairs_per_question: int = Field(3, gt=0)  # the m least similar chosen x rejected pairs
    # SFT step: the DPO model (self-training: the SFT model) samples pseudo-labels
    sft_k: int = Field(3, gt=0)
    pseudo_label_cap: int | None = Field(None, gt=0)  # per question; None: the percentile below
    cap_percentile: float = Field(90.0, gt=0, le=100)
    sft_init: Literal["base", "previous"] = "base"  # next SFT from the base or the last SFT model
    eval_dpo_model: bool = False  # also evaluate each round's DPO model
    eval_tasks: list[EvalTaskConfig] = []
    # evaluate the warm-up and each arm's final model with the calculator switched the other way
    calculator_ablation: bool = True
    calculator_ablation_n: int | None = Field(None, gt=0)  # questions per split; None: all
    sft: DPOSTSFTConfig = DPOSTSFTConfig()
    dpo: DPOSTDPOConfig = DPOSTDPOConfig()

    @model_validator(mode="after")
    def _gold_within_questions(self) -> DPOSTConfig:
        if self.gold_questions and self.n_questions and self.gold_questions > self.n_questions:
            raise ValueError(
                f"dpo_st.gold_questions ({self.gold_questions}) is more than dpo_st.n_questions "
                f"({self.n_questions})"
            )
        return self


# sections only the SRIT method reads; DPO-ST keeps its own under ``dpo_st``
_SRIT_ONLY = ("teacher", "sft", "sampling", "pairs", "rft", "dpo", "sft_more")


class Recipe(_Strict):
    name: str = "srit-arithmetic"
    # srit: self-refine instruction-tuning; dpo_st: DPO-augmented self-training;
    # self_training: the same loop without the DPO step (RFT)
    method: Literal["srit", "dpo_st", "self_training"] = "srit"
    seed: int = 0
    threads: int | None = None  # torch threads; None: torch's default
    # fill in ``<<expr=`` annotations with a safe calculator while decoding (sampling and eval)
    calculator: bool = True
    student: StudentConfig = StudentConfig()
    task: TaskConfig = TaskConfig()
    teacher: TeacherConfig = TeacherConfig()
    sft: SFTConfig = SFTConfig()
    sampling: SamplingConfig = SamplingConfig()
    pairs: PairsConfig = PairsConfig()
    rft: RFTConfig = RFTConfig()
    dpo: DPOConfig = DPOConfig()
    eval: EvalConfig = EvalConfig()
    # the control: SFT on the demonstrations trained on for as many steps as RFT and DPO took
    sft_more: bool = True
    dpo_st: DPOSTConfig | None = None  # method dpo_st / self_training (defaults when absent)

    @model_validator(mode="after")
    def _sections_of_method(self) -> Recipe:
        """``method`` decides which sections a recipe may set."""
        if self.method == "srit":
            if self.dpo_st is not None:
                raise ValueError("key 'dpo_st' is read by methods dpo_st and self_training only")
            return self
        if self.dpo_st is None:
            self.dpo_st = DPOSTConfig()
        for key in _SRIT_ONLY:
            value = getattr(self, key)
            if key == "sampling":  # its engine keys are every method's
                value = value.model_copy(update={"engine": "auto", "vllm": VLLMConfig()})
            if key in self.model_fields_set and value != type(self).model_fields[key].get_default(
                call_default_factory=True
            ):
                raise ValueError(
                    f"key '{key}' is read by method srit only; method {self.method} takes its "
                    f"settings from dpo_st (e.g. dpo_st.sft, dpo_st.dpo, dpo_st.k)"
                )
        return self


class RecipeError(ValueError):
    """A recipe file that cannot be used; the message names the file and the key."""


def default_recipe_path() -> Path:
    return Path(__file__).parent / "recipes" / "default.yaml"


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load a recipe YAML (the embedded default when ``path`` is None), then apply
    ``overrides`` (a nested dict). Unknown keys and wrong types raise RecipeError."""
    path = Path(path) if path is not None else default_recipe_path()
    if not path.exists():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    if overrides:
        data = _merge(data, overrides)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_describe(path, e)) from None


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _describe(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid recipe"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if not key:  # a check across sections: its message names the keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        elif e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'")
        else:
            lines.append(f"  key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)
