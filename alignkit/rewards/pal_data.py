"""PAL's data: preference pairs that carry a user id, and the embeddings φ(x, y) PAL maps into its preference space.

:func:`load_user_pairs` reads pairs with :func:`alignkit.data.readers.read_rows` and refuses a row without a user
id with one line naming the file, the line and the column. :class:`Embedder` gives φ(x, y) of (prompt,
response) items from the builtin sentence encoder (``all-minilm-l6-v2``: the text ``prompt + "\\n\\n" +
response``, mean-pooled and L2-normalised) or from a causal LM (``policy:MODEL``: the last hidden state at the
response's last token, the position a reward model reads, L2-normalised); it caches each item's embedding, so
training, evaluation and adaptation on the same texts encode them once per process.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from alignkit.data.convert import RowContext, build_record
from alignkit.data.readers import read_rows
from alignkit.data.records import PreferencePair, Text
from alignkit.data.tokenize import to_messages
from alignkit.models.encoder import DEFAULT_ENCODER
from alignkit.progress import Bars

USER_KEYS = ("user_id", "user")  # the columns read as the user id, first found wins


def user_of(pair: PreferencePair, keys: Sequence[str] = USER_KEYS) -> str | None:
    for key in keys:
        value = pair.metadata.get(key)
        if value is not None and str(value).strip():
            return str(value)
    return None


def load_user_pairs(source: str | Path, user_key: str | None = None, log: Callable[[str], None] | None = None
                    ) -> list[tuple[str, PreferencePair]]:
    """(user id, pair) per row of ``source``; a row without a user id is a :class:`DataError` naming the file,
    the line and the column (``user_key``, default ``user_id`` or ``user``)."""
    keys = (user_key,) if user_key else USER_KEYS

    def build(data: dict, ctx: RowContext) -> tuple[str, PreferencePair]:
        pair = build_record(data, ctx, "pair")
        user = user_of(pair, keys)
        if user is None:
            raise ctx.error(f"no user id: PAL needs every preference row to name its user in a "
                            f"{' or '.join(repr(k) for k in keys)} column", keys[0])
        return user, pair

    return read_rows(source, build, log=log).records


def pair_text(prompt: Text, response: Text) -> str:
    """The one string the sentence encoder embeds for (prompt, response)."""
    def flat(value: Text) -> str:
        return value if isinstance(value, str) else "\n".join(m["content"] for m in to_messages(value))
    return f"{flat(prompt)}\n\n{flat(response)}"


class Embedder:
    """φ(x, y) for (prompt, response) items, cached per item. ``spec`` is ``all-minilm-l6-v2`` (the builtin
    sentence encoder), another sentence-encoder directory / hub id, or ``policy:MODEL`` (a causal LM)."""

    def __init__(self, spec: str = DEFAULT_ENCODER, device: str = "cpu", batch_size: int = 32, log=print,
                 progress: bool = False):
        self.spec, self.device, self.batch_size, self.log, self.progress = spec, device, batch_size, log, progress
        self._cache: dict[tuple[str, str], Tensor] = {}
        self._encoder: Callable[[list[tuple[Text, Text]]], Tensor] | None = None  # loaded on first use

    def _encode(self, items: list[tuple[Text, Text]]) -> Tensor:
        if self._encoder is None:
            self._encoder = self._policy_encoder() if self.spec.startswith("policy:") else self._sentence_encoder()
        return self._encoder(items)

    def _sentence_encoder(self) -> Callable[[list[tuple[Text, Text]]], Tensor]:
        from alignkit.models.encoder import load_sentence_encoder

        encoder = load_sentence_encoder(self.spec, self.device)
        return lambda items: encoder.encode([pair_text(p, r) for p, r in items], batch_size=self.batch_size)

    def _policy_encoder(self) -> Callable[[list[tuple[Text, Text]]], Tensor]:
        from alignkit.data.tokenize import PromptEncoder
        from alignkit.engine.heads import hidden_at, last_token_positions
        from alignkit.engine.layouts import collate
        from alignkit.engine.logprobs import hidden_state_head
        from alignkit.models import load_model

        model, tokenizer = load_model(self.spec.removeprefix("policy:"), device=self.device, log=self.log)
        model.eval().requires_grad_(False)
        parts = hidden_state_head(model)
        if parts is None:
            raise ValueError(f"encoder {self.spec!r}: the model's logits are not a linear map of a hidden state")
        decoder, encoder = parts[0], PromptEncoder(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

        @torch.no_grad()
        def encode(items: list[tuple[Text, Text]]) -> Tensor:
            rows = [(encoder.encode_prompt(p), encoder.encode_response(p, r)) for p, r in items]
            batch = collate(rows, pad).to(next(model.parameters()).device)
            hidden = hidden_at(decoder, batch, last_token_positions(batch))
            return torch.nn.functional.normalize(hidden.float(), dim=-1).cpu()

        return encode

    def __call__(self, prompts: Sequence[Text], responses: Sequence[Text]) -> Tensor:
        """[N, D] float32 embeddings of the (prompt, response) items."""
        keys = [(repr(p), repr(r)) for p, r in zip(prompts, responses, strict=True)]
        missing = list(dict.fromkeys(k for k in keys if k not in self._cache))
        lookup = {k: (p, r) for k, p, r in zip(keys, prompts, responses, strict=True)}
        with Bars(self.progress and bool(missing)).open() as bars:
            advance = bars.task(f"embed ({self.spec})", len(missing))
            for start in range(0, len(missing), self.batch_size):
                chunk = missing[start:start + self.batch_size]
                for key, row in zip(chunk, self._encode([lookup[k] for k in chunk]), strict=True):
                    self._cache[key] = row
                advance(len(chunk))
        if not keys:
            return torch.zeros(0, 0)
        return torch.stack([self._cache[k] for k in keys])


@dataclass
class PairTensors:
    """Embedded pairs: ``chosen`` and ``rejected`` [N, D], ``users`` [N] indices into ``user_ids``."""

    chosen: Tensor
    rejected: Tensor
    users: Tensor
    user_ids: list[str]

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, index: Tensor | list[int]) -> PairTensors:
        index = torch.as_tensor(index, dtype=torch.long)
        return PairTensors(self.chosen[index], self.rejected[index], self.users[index], self.user_ids)

    def of_user(self, user: str) -> Tensor:
        """Indices of ``user``'s pairs, in file order."""
        return torch.nonzero(self.users == self.user_ids.index(user)).flatten()


def embed_pairs(rows: Sequence[tuple[str, PreferencePair]], embedder: Callable[[Sequence[Text], Sequence[Text]],
                Tensor], user_ids: Sequence[str] | None = None) -> PairTensors:
    """Embed (user, pair) rows; users are numbered in order of first appearance unless ``user_ids`` is given."""
    ids = list(user_ids) if user_ids is not None else list(dict.fromkeys(u for u, _ in rows))
    index = {u: i for i, u in enumerate(ids)}
    unknown = sorted({u for u, _ in rows if u not in index})
    if unknown:
        raise ValueError(f"users {unknown[:5]} are not among the {len(ids)} given")
    prompts = [p.prompt for _, p in rows]
    both = embedder(prompts * 2, [p.chosen for _, p in rows] + [p.rejected for _, p in rows])
    n = len(rows)
    return PairTensors(both[:n], both[n:], torch.tensor([index[u] for u, _ in rows], dtype=torch.long), ids)


__all__ = ["Embedder", "PairTensors", "USER_KEYS", "embed_pairs", "load_user_pairs", "pair_text", "user_of"]
