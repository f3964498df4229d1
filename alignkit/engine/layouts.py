"""Batch layouts for the log-prob engine: padded rows (``collate``), shared-prefix and packed rows.

A *group* is one prompt with N responses (a preference pair is N=2, KTO's row with its KL partner is
N=2, best-of-N scoring is N). The shared-prefix layout writes a group once as [prompt | r1 | ... | rN]:
a 4-D attention mask lets every response token see the prompt and the earlier tokens of its own
response only, and position ids restart after the prompt for each response, so each response is computed
exactly as if it followed the prompt alone while the prompt is fed (and back-propagated) once. Packing
puts several groups in one row with a block-diagonal mask, so rows carry little or no padding.

The mask is handed to the model as-is: transformers' ``create_causal_mask`` returns a 4-D mask untouched
(``masking_utils._preprocess_mask_arguments``). ``sdpa`` takes a boolean mask (True = attend); ``eager``
*adds* the mask to the attention scores, so it needs an additive float mask (0 / dtype min). Other
attention back-ends (flash attention, flex, paged) drop or reinterpret a dense mask, and sliding-window
layers would silently lose their window, so those models fall back to padded rows;
``alignkit.engine.exactness.layout_support`` decides, with a numerical probe on a few tokens as the final word.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from alignkit.engine.segments import SegmentPlan

Group = tuple[list[int], list[list[int]]]  # prompt ids, response ids
Rows = list[tuple[list[int], list[int]]]  # (prompt ids, response ids) per row
RowTokens = int | Literal["all", "longest"] | None  # packed row capacity (see build_groups)

SUPPORTED_ATTENTION = ("sdpa", "eager")


@dataclass
class SequenceBatch:
    """Right-padded rows. ``target_mask[i, t]`` marks positions whose token is scored (response tokens)."""

    input_ids: Tensor  # [N, T]
    attention_mask: Tensor  # [N, T]
    target_mask: Tensor  # [N, T] bool

    def to(self, device: torch.device) -> SequenceBatch:
        return SequenceBatch(self.input_ids.to(device), self.attention_mask.to(device),
                             self.target_mask.to(device))

    @property
    def num_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(rows: Sequence[tuple[list[int], list[int]]], pad_id: int, score_prompt: bool = False
            ) -> SequenceBatch:
    """Pad (prompt, response) rows into a batch. ``score_prompt`` also scores prompt tokens (DOVE's joint
    log-prob); the very first token is never scored since nothing predicts it."""
    width = max(len(p) + len(r) for p, r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    target = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, response) in enumerate(rows):
        n = len(prompt) + len(response)
        ids[i, :n] = torch.tensor(prompt + response, dtype=torch.long)
        attention[i, :n] = 1
        target[i, 1 if score_prompt else len(prompt):n] = True
    return SequenceBatch(ids, attention, target)


@dataclass
class PackedBatch:
    """Rows holding one or more groups. Scoring is explicit: entry ``m`` scores token ``score_target[m]``
    from the hidden state at flat position ``score_src[m]`` (row * T + t) and adds its log-prob to every
    sequence ``score_seq[k]`` with ``score_entry[k] == m``. Shared entries (prompt tokens scored for the
    joint log-prob) are computed once and credited to every response of their group."""

    input_ids: Tensor  # [R, T]
    position_ids: Tensor  # [R, T]
    segment: Tensor  # [R, T] group number within its row, -1 on padding
    branch: Tensor  # [R, T] 0 on the prompt, k on response k (1-based), -1 on padding
    score_src: Tensor  # [M]
    score_target: Tensor  # [M]
    score_entry: Tensor  # [K]
    score_seq: Tensor  # [K]
    num_sequences: int
    spans: list = field(default_factory=list)  # per row: (start, prompt length, response lengths) per group
    _masks: dict = field(default_factory=dict, repr=False)

    def to(self, device: torch.device) -> PackedBatch:
        return PackedBatch(*(t.to(device) for t in (self.input_ids, self.position_ids, self.segment, self.branch,
                                                      self.score_src, self.score_target, self.score_entry,
                                                      self.score_seq)), self.num_sequences, self.spans)

    @property
    def num_tokens(self) -> int:
        """Real (non-padding) tokens fed to the model."""
        return int((self.segment >= 0).sum())

    @property
    def padded_tokens(self) -> int:
        return self.input_ids.numel()

    def allowed(self) -> Tensor:
        """[R, T, T] bool: query t may attend to key s."""
        seg, branch = self.segment, self.branch
        idx = torch.arange(seg.shape[1], device=seg.device)
        causal = idx[:, None] >= idx[None, :]
        same_group = seg[:, :, None] == seg[:, None, :]
        # prompt keys are visible to the whole group, response keys only to their own response
        visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
        # padding sees earlier padding (never real tokens), so no softmax row is empty
        return causal & same_group & visible

    def attention_mask(self, implementation: str, dtype: torch.dtype = torch.float32) -> Tensor:
        """The 4-D mask in the convention of ``implementation`` (see module docstring); cached, since the
        policy and reference forwards of a step share the batch."""
        key = (implementation, dtype)
        if key not in self._masks:
            allowed = self.allowed()[:, None]
            if implementation == "sdpa":
                self._masks[key] = allowed
            elif implementation == "eager":
                mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
                self._masks[key] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)
            else:
                raise ValueError(f"no 4-D mask convention for attention implementation {implementation!r}")
        return self._masks[key]

    def segment_plan(self) -> SegmentPlan:
        """The per-segment attention plan of these rows (:class:`alignkit.engine.segments.SegmentPlan`); cached
        with the masks, since it depends only on the spans and the row width, and the policy and reference
        forwards of a step share the batch (the plan also keeps its small per-call masks)."""
        key = ("segment_plan", self.input_ids.shape[1])
        if key not in self._masks:
            self._masks[key] = SegmentPlan.from_spans(self.spans, self.input_ids.shape[1])
        return self._masks[key]


def group_length(group: Group) -> int:
    prompt, responses = group
    return len(prompt) + sum(len(r) for r in responses)


def _assign_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """First-fit decreasing bin packing of group indices into rows of ``capacity`` tokens (a group longer
    than the capacity gets a row of its own)."""
    rows: list[list[int]] = []
    free: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, room in enumerate(free):
            if lengths[index] <= room:
                rows[r].append(index)
                free[r] -= lengths[index]
                break
        else:
            rows.append([index])
            free.append(capacity - lengths[index])
    return rows


def build_groups(groups: Sequence[Group], pad_id: int, score_prompt: bool = False, pack: bool = False,
                 row_tokens: RowTokens = None) -> PackedBatch:
    """Lay out ``groups`` as shared-prefix rows; sequences are numbered group-major (group 0's responses,
    then group 1's, ...). ``pack`` puts several groups in one row, up to ``row_tokens`` tokens per row: by
    default (or ``"longest"``) the longest group, so no row is longer than without packing; ``"all"`` puts every
    group in one row, no padding at all, for attention that runs per segment and so never builds the row's
    T x T mask. ``score_prompt`` also scores the prompt tokens (joint log-prob, as ``collate``); the first
    token of a row is never scored."""
    lengths = [group_length(g) for g in groups]
    if pack and row_tokens == "all":
        placement = [list(range(len(groups)))]
    elif pack:
        placement = _assign_rows(lengths, row_tokens if isinstance(row_tokens, int) else max(lengths))
    else:
        placement = [[i] for i in range(len(groups))]
    width = max(sum(lengths[i] for i in row) for row in placement)
    n_rows = len(placement)
    ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    segment = torch.full((n_rows, width), -1, dtype=torch.long)
    branch = torch.full((n_rows, width), -1, dtype=torch.long)
    first_seq = [0] * len(groups)
    total = 0
    for g, (_, responses) in enumerate(groups):
        first_seq[g] = total
        total += len(responses)
    src: list[int] = []
    target: list[int] = []
    entry: list[int] = []
    seq: list[int] = []
    spans: list[list[tuple[int, int, list[int]]]] = []
    for r, row in enumerate(placement):
        offset = 0
        spans.append([])
        for slot, g in enumerate(row):
            prompt, responses = groups[g]
            p = len(prompt)
            spans[-1].append((offset, p, [len(x) for x in responses]))
            base = r * width
            ids[r, offset:offset + p] = torch.tensor(prompt, dtype=torch.long)
            positions[r, offset:offset + p] = torch.arange(p)
            segment[r, offset:offset + lengths[g]] = slot
            branch[r, offset:offset + p] = 0
            prompt_entries = []
            if score_prompt:
                for i in range(1, p):
                    prompt_entries.append(len(src))
                    src.append(base + offset + i - 1)
                    target.append(prompt[i])
            cursor = offset + p
            for k, response in enumerate(responses):
                n = len(response)
                s = first_seq[g] + k
                ids[r, cursor:cursor + n] = torch.tensor(response, dtype=torch.long)
                positions[r, cursor:cursor + n] = torch.arange(p, p + n)
                branch[r, cursor:cursor + n] = k + 1
                for m in prompt_entries:
                    entry.append(m)
                    seq.append(s)
                for j in range(n):
                    if j == 0 and p == 0:
                        continue  # nothing predicts a row's first token
                    # the first response token is predicted by the last prompt token, not its row neighbour
                    entry.append(len(src))
                    seq.append(s)
                    src.append(base + (offset + p - 1 if j == 0 else cursor + j - 1))
                    target.append(response[j])
                cursor += n
            offset = cursor
    as_long = lambda values: torch.tensor(values, dtype=torch.long)  # noqa: E731
    return PackedBatch(ids, positions, segment, branch, as_long(src), as_long(target), as_long(entry), as_long(seq),
                       total, spans)


# ---------------------------------------------------------------- when the layout is exact


def attention_implementation(model: nn.Module) -> str | None:
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = getattr(base, "config", None)
    return getattr(config, "_attn_implementation", None) if config is not None else None


def static_support(model: nn.Module) -> str | None:
    """None when the model's configuration can honour a custom 4-D mask, else the reason it cannot."""
    implementation = attention_implementation(model)
    if implementation not in SUPPORTED_ATTENTION:
        return (f"attention implementation {implementation!r} does not take a custom 4-D mask "
                f"(supported: {', '.join(SUPPORTED_ATTENTION)})")
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    config = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    layer_types = getattr(config, "layer_types", None)
    if layer_types and any(t != "full_attention" for t in layer_types):
        return f"layers of type {sorted(set(layer_types) - {'full_attention'})} ignore a custom 4-D mask's shape"
    if not layer_types and getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "sliding-window attention would be replaced by the custom 4-D mask"
    return None


def probe_group(vocab_size: int) -> Group:
    """A prompt with three responses of ordinary (mid-vocabulary) tokens: special tokens out of place give
    huge log-probs whose float noise would blur the comparison."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab_size // 8, vocab_size // 2, (24,), generator=generator).tolist()
    return ids[:8], [ids[8:13], ids[13:17], ids[17:24]]
