"""The student model: loading (``loading.py``: the embedded GGUF, a hub id, a folder, a .gguf
file or a tiny test model; dtype and precision) and the :class:`Student` that every stage trains
or samples (``student.py``)."""

from selftrain.models.checkpoints import checkpoint_files, checkpoint_folder
from selftrain.models.loading import (
    DEFAULT_STUDENT,
    ModelLoadError,
    bf16_is_faster,
    load_model_and_tokenizer,
    load_tokenizer,
    resolve_autocast,
    resolve_dtype,
    smollm2_gguf,
    tiny_model,
)
from selftrain.models.student import Inference, Student, linear_names

__all__ = [
    "DEFAULT_STUDENT",
    "Inference",
    "ModelLoadError",
    "Student",
    "bf16_is_faster",
    "checkpoint_files",
    "checkpoint_folder",
    "linear_names",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "resolve_autocast",
    "resolve_dtype",
    "smollm2_gguf",
    "tiny_model",
]
