"""Resolve a model spec (builtin name, local directory, .gguf file or hub id) to model + tokenizer."""

from __future__ import annotations

import os
import re
import time
import warnings
from difflib import get_close_matches
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.models.builtin import (
    BUILTIN_MODELS,
    DEFAULT_MODEL,
    ModelNotAvailableError,
    clear_gguf_quantization_markers,
    ensure_converted,
)

# peft (0.21) reads transformers 5's deprecated `is_gradient_checkpointing` whenever it wraps or loads an
# adapter; the warning is about peft's code, not the user's, so it is silenced here.
warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated.*", category=FutureWarning)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | None = None) -> torch.device:
    """``auto`` (or None) picks CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def resolve_model_path(spec: str, log=print) -> tuple[str, str | None]:
    """Return (directory or hub id, gguf file name or None) for a spec."""
    if spec in BUILTIN_MODELS:
        return str(ensure_converted(BUILTIN_MODELS[spec], log=log)), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotAvailableError(f"GGUF file not found: {path}")
        return str(path.parent), path.name
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise ModelNotAvailableError(f"{path} is a directory but holds no config.json")
        return str(path), None
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotAvailableError(f"model path {spec!r} is neither a model directory nor a .gguf file")
    if not HUB_ID.fullmatch(spec):
        close = get_close_matches(spec, list(BUILTIN_MODELS), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"builtin models: {', '.join(BUILTIN_MODELS)}"
        raise ModelNotAvailableError(f"model {spec!r} is not a builtin model, a local directory or .gguf file, "
                                     f"or a hub id of the form org/name; {hint}")
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and not _in_hub_cache(spec):
        raise ModelNotAvailableError(f"model {spec!r} is a hub id, HF_HUB_OFFLINE=1 is set and it is not in the "
                                     "local hub cache; download it first, give a local directory, or use the "
                                     f"builtin {DEFAULT_MODEL!r}")
    return spec, None  # a hub id


# org/name, as the hub spells repository ids (letters, digits, '-', '_', '.')
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - no cache support means "not cached"
        return False


def load_tokenizer(spec: str = DEFAULT_MODEL, trust_remote_code: bool = False, log=print):
    location, gguf_file = resolve_model_path(spec, log=log)
    tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file,
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    spec: str = DEFAULT_MODEL,
    dtype: str | torch.dtype = "float32",
    device: str | None = "auto",
    trust_remote_code: bool = False,
    log=print,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer.

    ``spec`` is a builtin name (default ``smollm2-135m-instruct``, see ``alignkit models list``), a local
    Hugging Face directory, a ``.gguf`` file, or a hub id. Keep master weights in float32 for training:
    the dequantized Q4_1 weights sit on bf16 rounding boundaries, so bf16 storage distorts small updates.
    A directory holding a PEFT adapter loads its base model with the adapter attached.
    """
    start = time.perf_counter()
    location, gguf_file = resolve_model_path(spec, log=log)
    torch_dtype = resolve_dtype(dtype)
    try:
        if Path(location, "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(location, dtype=torch_dtype,
                                                             trust_remote_code=trust_remote_code)
        else:
            model = AutoModelForCausalLM.from_pretrained(location, gguf_file=gguf_file, dtype=torch_dtype,
                                                         trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(location, gguf_file=gguf_file,
                                                  trust_remote_code=trust_remote_code)
    except OSError as err:
        if gguf_file is None and not Path(location).exists():
            raise ModelNotAvailableError(
                f"could not load {spec!r} from the Hugging Face hub ({err.__class__.__name__}). Offline? "
                f"Use a local directory, a .gguf file, or the builtin {DEFAULT_MODEL!r} "
                f"(`alignkit models list`)."
            ) from err
        raise
    if gguf_file is not None:
        clear_gguf_quantization_markers(model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(resolve_device(device))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    log(f"loaded {spec} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, {torch_dtype}, "
        f"{model.device}) in {time.perf_counter() - start:.1f} s")
    return model, tokenizer
