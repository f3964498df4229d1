"""Model loading: builtin offline models, local directories, GGUF files, hub ids; tiny test models."""

from alignkit.models.builtin import BUILTIN_MODELS, DEFAULT_MODEL, ModelNotAvailableError
from alignkit.models.loading import load_model, load_tokenizer, resolve_device, resolve_dtype
from alignkit.models.tiny import tiny_llama

__all__ = [
    "BUILTIN_MODELS",
    "DEFAULT_MODEL",
    "ModelNotAvailableError",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "tiny_llama",
]
