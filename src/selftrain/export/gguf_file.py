"""A GGUF file of an exported Llama-architecture model, for llama.cpp and Ollama, written with
the ``gguf`` package (llama.cpp's own writer). PyPI has no converter, so the mapping that
llama.cpp's ``convert_hf_to_gguf.py`` does for Llama is done here: the hyperparameters, the
tensors by gguf's name map (q and k rows reordered for llama.cpp's rotary layout, the tied
output head left out), and the tokenizer as a byte-level BPE vocabulary with its merges."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

GGUF_TYPES = ("f32", "f16", "bf16")

# tokenizer.json's pre-tokenizer -> llama.cpp's name for it (tokenizer.ggml.pre): the splits
# llama.cpp applies before BPE must be the ones the model was trained with
_GPT2_REGEX = {"type": "ByteLevel", "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}
_LLAMA3_SPLIT = (
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+"
    "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
)


class GGUFExportError(ValueError):
    """A model or tokenizer this GGUF writer cannot map; the message says which part."""


def write_gguf(model, folder: Path, path: Path, out_type: str = "f16") -> Path:
    """Write ``model`` (a Llama-architecture causal LM, its tokenizer saved in ``folder``) as
    the GGUF file ``path`` with 2-D weights in ``out_type`` (norms stay f32, as llama.cpp
    keeps them). Written to ``path``.tmp, then renamed."""
    import gguf

    config = model.config
    if out_type not in GGUF_TYPES:
        raise GGUFExportError(f"--gguf takes {', '.join(GGUF_TYPES)}, not {out_type!r}")
    check_architecture(config)
    qtype = getattr(gguf.GGMLQuantizationType, out_type.upper())
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tokens, types, pre = vocabulary(tok, folder, config.vocab_size)
    rope = _rope_factors(config)
    tmp = path.with_name(path.name + ".tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name)
    _hyperparameters(writer, config, qtype)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    bos, eos = _adds_bos_eos(tok)
    writer.add_add_bos_token(bos)
    writer.add_add_eos_token(eos)
    names = gguf.TensorNameMap(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    if rope is not None:
        writer.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", rope.numpy())
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp uses the token embeddings as the output head
        if "rotary_emb" in name:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise GGUFExportError(f"GGUF export: no llama.cpp name for the tensor {name!r}")
        data = _llama_cpp_layout(name, tensor.detach().float().cpu(), config)
        kind = qtype if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        array = gguf.quants.quantize(data.numpy(), kind)
        shape = (
            gguf.quant_shape_from_byte_shape(array.shape, kind)
            if array.dtype == np.uint8
            else array.shape
        )
        writer.add_tensor(new, array, raw_shape=shape, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def check_architecture(config) -> None:
    """Refuse a model this writer does not map, and rotary scaling it would write wrong."""
    if config.model_type != "llama":
        raise GGUFExportError(
            f"GGUF export maps the Llama architecture (SmolLM2, Llama 3, TinyLlama); this model "
            f"is {config.model_type!r}: export without --gguf and convert it with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    rope = _rope_parameters(config)["rope_type"]
    if rope not in ("default", "llama3"):
        raise GGUFExportError(
            f"GGUF export: rotary scaling {rope!r} is not mapped (default and llama3 are); "
            "convert with llama.cpp's convert_hf_to_gguf.py"
        )


def _hyperparameters(writer, config, qtype) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_parameters(config)["rope_theta"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)
    file_type = {
        gguf.GGMLQuantizationType.F32: gguf.LlamaFileType.ALL_F32,
        gguf.GGMLQuantizationType.F16: gguf.LlamaFileType.MOSTLY_F16,
        gguf.GGMLQuantizationType.BF16: gguf.LlamaFileType.MOSTLY_BF16,
    }[qtype]
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _rope_parameters(config) -> dict:
    """The rotary settings (transformers 5's ``rope_parameters``; older: ``rope_theta`` and
    ``rope_scaling``)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.get("type", "default"))
    return params


def _rope_factors(config) -> torch.Tensor | None:
    """Llama 3's frequency scaling as llama.cpp takes it (a ``rope_freqs`` tensor: each
    frequency's divisor), computed by transformers' own Llama 3 rotary initialisation; None
    without scaling."""
    params = _rope_parameters(config)
    if params["rope_type"] == "default":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    plain = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, torch.device("cpu"))
    return (plain / scaled.float()).float()


def _llama_cpp_layout(name: str, data: torch.Tensor, config) -> torch.Tensor:
    """q and k projections with each head's rows reordered: Hugging Face's rotary pairs
    (i, i + d/2), llama.cpp's pairs neighbours (2i, 2i + 1)."""
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(data, config.num_attention_heads)
    if name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(data, config.num_key_value_heads or config.num_attention_heads)
    return data


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    return (
        w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def vocabulary(tok, folder: Path, vocab_size: int) -> tuple[list[str], list[int], str]:
    """The tokens of ``tok`` (padded to the model's vocabulary size), their llama.cpp types
    and the pre-tokenizer's llama.cpp name, from ``folder``'s tokenizer.json (a byte-level
    BPE)."""
    import gguf

    file = folder / "tokenizer.json"
    if not file.is_file():
        raise GGUFExportError(f"{folder}: no tokenizer.json; GGUF export needs a fast tokenizer")
    spec = json.loads(file.read_text(encoding="utf-8"))
    if spec.get("model", {}).get("type") != "BPE":
        raise GGUFExportError(
            f"{file}: a {spec.get('model', {}).get('type')} tokenizer; GGUF export maps "
            "byte-level BPE tokenizers (SmolLM2, Llama 3)"
        )
    pre = _pre_tokenizer(spec.get("pre_tokenizer"), file)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    if max(by_id) >= vocab_size:
        raise GGUFExportError(f"{file}: token id {max(by_id)} is past the model's {vocab_size}")
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            special = added[i].special or _looks_special(added[i].content)
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, pre


def _looks_special(token: str) -> bool:
    return (token.startswith("<|") and token.endswith("|>")) or (
        token.startswith("<") and token.endswith(">") and " " not in token and len(token) > 2
    )


def _pre_tokenizer(pre: dict | None, file: Path) -> str:
    """llama.cpp's name for a pre-tokenizer it applies the same way."""
    steps = pre.get("pretokenizers", []) if pre and pre.get("type") == "Sequence" else [pre]

    def like(step: dict | None, want: dict) -> bool:
        return bool(step) and all(step.get(k) == v for k, v in want.items())

    if len(steps) == 1 and like(steps[0], _GPT2_REGEX):
        return "gpt-2"
    if len(steps) == 2 and like(steps[0], _DIGITS) and like(steps[1], _GPT2_REGEX):
        return "smollm"
    if (
        len(steps) == 2
        and like(steps[0], {"type": "Split"})
        and steps[0].get("pattern", {}).get("Regex") == _LLAMA3_SPLIT
        and like(steps[1], {"type": "ByteLevel", "use_regex": False})
    ):
        return "llama-bpe"
    raise GGUFExportError(
        f"{file}: its pre-tokenizer ({json.dumps(pre)[:120]}) is not one GGUF export maps "
        "(GPT-2's, SmolLM's, Llama 3's); convert with llama.cpp's convert_hf_to_gguf.py"
    )


def _adds_bos_eos(tok) -> tuple[bool, bool]:
    """Whether the tokenizer puts BOS before (EOS after) a text, as llama.cpp should."""
    ids = tok("a").input_ids
    bos = tok.bos_token_id is not None and len(ids) > 1 and ids[0] == tok.bos_token_id
    eos = tok.eos_token_id is not None and len(ids) > 1 and ids[-1] == tok.eos_token_id
    return bos, eos
