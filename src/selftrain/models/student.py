"""The student: a causal LM with its tokenizer and chat format, LoRA adapters, checkpoints and
the model it decodes with."""

from __future__ import annotations

import contextlib
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from selftrain.chat import prompt_messages
from selftrain.config import StudentConfig
from selftrain.models.checkpoints import checkpoint_folder, sort_target_modules, weight_files
from selftrain.models.loading import ModelLoadError, load_model_and_tokenizer, resolve_autocast


@contextlib.contextmanager
def _peft_reads_a_deprecated_alias() -> Iterator[None]:
    """Wrapping a model in peft (0.21) reads transformers' ``is_gradient_checkpointing``,
    which transformers 5 deprecated in favour of ``is_activation_checkpointing`` (the same
    value) with a FutureWarning on every read: the cause is in peft and harmless, so that one
    warning is silenced here, around peft's wrapping only."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield


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
            # non-reentrant: gradients reach LoRA adapters without inputs that require grad.
            # transformers renamed it activation checkpointing (the old name warns); the
            # releases before the rename have the old name only.
            enable = getattr(self.model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable({"use_reentrant": False})
            else:
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
        # the run checkpoint applied on top of cfg.model for evaluation (apply_checkpoint)
        self.checkpoint: Path | None = None

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
                targets = linear_names(self.model) if targets == "all-linear" else [targets]
        config = LoraConfig(
            r=lc.r,
            lora_alpha=lc.alpha,
            lora_dropout=lc.dropout,
            target_modules=targets,
            layers_to_transform=layers,
            task_type="CAUSAL_LM",
        )
        with _peft_reads_a_deprecated_alias():
            self.model = get_peft_model(self.model, config)
        self.lora = True

    # ---- text <-> tokens -------------------------------------------------------------------
    def prompt_text(self, user: str) -> str:
        """The prompt for ``user`` under the configured system prompt (``cfg.system_prompt``)."""
        return self.chat_text(user, self.cfg.system_prompt)

    def prompt_ids(self, user: str) -> list[int]:
        """:meth:`prompt_text`'s tokens, with one BOS."""
        return self.chat_ids(user, self.cfg.system_prompt)

    def chat_text(self, user: str, system: str | None) -> str:
        """The prompt for ``user`` under the system prompt ``system`` (None: none): the chat
        template's, else a plain Question/Answer format."""
        messages = prompt_messages(user, system)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        prefix = f"{system}\n\n" if system else ""
        return f"{prefix}### Question:\n{user}\n\n### Answer:\n"

    def chat_ids(self, user: str, system: str | None) -> list[int]:
        """:meth:`chat_text`'s tokens, without extra special tokens but one BOS."""
        ids = self.tokenizer(self.chat_text(user, system), add_special_tokens=False).input_ids
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
            if self.lora:
                # The vocabulary is never resized, so the adapter folder needs no copy of the
                # embeddings. Said here rather than left to peft's "auto", which looks for the
                # base's config.json (absent for a .gguf student, or asks the hub) and warns
                # "Could not find a config file in ..." when it cannot tell.
                self.model.save_pretrained(tmp, save_embedding_layers=False)
            else:
                self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            sort_target_modules(tmp / "adapter_config.json")
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

            file = directory / "adapter_model.safetensors"
            if not file.is_file():
                raise ModelLoadError(
                    f"{file}: no such file; {directory} is not a complete LoRA checkpoint "
                    "(a stage killed while saving?): delete it to redo that stage"
                )
            state = load_file(file, device=str(self.device))
            set_peft_model_state_dict(self.model, state)
            self.weights_dir = directory
            return
        state = {}
        for file in weight_files(directory):
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
        directory = checkpoint_folder(directory)
        if (directory / "adapter_config.json").is_file():
            from peft import PeftModel

            if self.lora:
                raise ModelLoadError("apply_checkpoint merges adapters into a LoRA-less student")
            with _peft_reads_a_deprecated_alias():
                model = PeftModel.from_pretrained(self.model, directory)
            self.model = model.merge_and_unload()
        else:
            self.load_weights(directory)
        self.checkpoint = directory

    @contextlib.contextmanager
    def inference(self) -> Iterator[Inference]:
        """The model to decode with, in eval mode, and whether to decode it under autocast.

        Where it fits in memory (:func:`_copy_fits`), a plain copy: LoRA adapters folded into
        the weights and unloaded (no adapter matmuls or wrapper calls per step), in bf16 when
        ``autocast_bf16`` is set on fp32 weights (cast once, where autocast would recast every
        weight at every step). Measured here: ~1.5x faster sampling than decoding through the
        adapters. Without a copy (nothing to fold or cast, a 4-bit base, or a student too large
        to copy), the student's own model, through its adapters and under autocast."""
        fold = self.lora and not self.quantized
        cast = self.cfg.autocast_bf16 and _dtype(self.model) == torch.float32
        was_training = self.model.training
        self.model.eval()
        try:
            if (fold or cast) and _copy_fits(self.model, torch.bfloat16 if cast else None):
                model = _decoding_copy(self.model, torch.bfloat16 if cast else None)
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


def _decoding_copy(model: nn.Module, cast: torch.dtype | None) -> nn.Module:
    """A copy of ``model`` to fold its LoRA adapters into (and, with ``cast``, to cast).

    Only the weights folding changes (the base weights of the adapted layers) and the
    adapters are copied as they are; the rest (embeddings, output layer, norms, the layers
    LoRA leaves alone) are the student's own tensors, which decoding only reads, or with
    ``cast`` made in that dtype straight away. For SmolLM2 with LoRA on the top 15 layers:
    212 MB copied in fp32 instead of 540; in bf16 no fp32 copy of the unadapted weights."""
    import copy

    from peft.tuners.lora import LoraLayer

    # the adapted layers' base weights and adapters: copied as they are, folded in fp32
    lora = {id(t) for m in model.modules() if isinstance(m, LoraLayer) for t in m.parameters()}
    memo: dict[int, object] = {}
    for p in model.parameters():
        if id(p) in lora:
            continue
        if cast is not None:
            memo[id(p)] = nn.Parameter(p.detach().to(cast), requires_grad=False)
        elif not p.requires_grad:
            memo[id(p)] = p
    for b in model.buffers():
        memo[id(b)] = b if cast is None or not b.is_floating_point() else b.to(cast)
    return copy.deepcopy(model, memo)


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


def linear_names(model: nn.Module) -> list[str]:
    """Names of the linear layers inside the decoder blocks (q_proj, ..., down_proj)."""
    decoder = model.get_decoder()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, mod in decoder.named_modules()
            if isinstance(mod, nn.Linear) and ".layers." in f".{name}"
        }
    )
