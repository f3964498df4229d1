"""MAH-DPO: one output head per objective over a shared backbone, trained with vector-valued preferences
(the model and the loss are ``alignkit.objectives.mah_dpo``).

Paper: Shen, Xia, Chang and Ammanabrolu, "Simultaneous Multi-objective Alignment Across Verifiable and
Non-verifiable Rewards", arXiv 2510.01167, 2025 (code ``pearls-lab/multiobj-align``).

Each pair carries ``metadata["preferences"] = {"objective": +1 | -1 | 0}`` (+1: chosen preferred on that
objective, −1: rejected preferred, 0 or absent: no label). Head k is trained with DPO on the pairs labelled on
objective k; the loss is the mean over the objectives present in the batch, and every objective's gradient
reaches the shared backbone::

    L_k = mean over pairs labelled on k of −log σ(β·s_k·[h_k(chosen) − h_k(rejected)])
    L   = mean over the objectives k present in the batch of L_k
    (s_k = ±1 the pair's label on k; h_k = log π_θ − log π_ref under head k, summed over response tokens)

Defaults: β = 0.1, ``heads`` the sorted objective names of the training data, ``perturbation_scale`` 0.

The policy is wrapped in a :class:`MultiHeadLM` by :meth:`MahDpoMethod.wrap_model` (head 0 is the model's own
output layer, the others start as copies of it), so checkpoints hold the extra heads like any other trainable
parameter. The reference head k is the initial head k: with ``perturbation_scale: 0`` (default) every initial
head equals the output layer, so any reference mode works (copy, adapter, precomputed); with perturbed heads the
reference heads are frozen copies of the perturbed initial heads (copy or adapter mode).

With LoRA the extra heads are trained in full while head 0 stays the frozen output layer (only the backbone
adapts under it); train without LoRA to give every head the same freedom.

The final model directory is the usual one (``from_pretrained`` loads head 0) plus ``mah_dpo_heads.safetensors``
with the other heads; :func:`load_multihead` loads all of them, and ``with model.ensemble_head(weights):``
makes ``model.lm.generate`` decode with the weighted head mixture (see ``docs/methods/mah_dpo.md``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from alignkit.data.readers import load_vector_pairs
from alignkit.data.records import PreferencePair
from alignkit.data.synthetic import SYNTHETIC_OBJECTIVES, make_vector_pairs
from alignkit.data.tokenize import encode_pair
from alignkit.engine.layouts import SequenceBatch, collate
from alignkit.engine.logprobs import hidden_state_head, token_logps
from alignkit.objectives.mah_dpo import MultiHeadLM, mah_dpo_loss
from alignkit.objectives.params import Params
from alignkit.train.config import TrainConfig
from alignkit.train.data import encode_splits, prompt_encoder, read_splits, rejected_rows_path
from alignkit.train.methods.base import BatchContext, Method, Rows, StepOutput, method_params, register_method
from alignkit.train.reference import AdapterDisabledReference

HEADS_FILE = "mah_dpo_heads.safetensors"


class MahDpoParams(Params):
    beta: float = Field(0.1, gt=0, description="DPO's inverse temperature, shared by every head")
    heads: list[str] | None = Field(None, description="objective names in head order (head 0 first); default: the "
                                                      "sorted objective names of the training data")
    perturbation_scale: float = Field(0.0, ge=0, description="std of the noise added to heads 1..K−1 at start")

    @field_validator("heads")
    @classmethod
    def _distinct(cls, heads: list[str] | None) -> list[str] | None:
        if heads is not None and (not heads or len(set(heads)) != len(heads) or not all(heads)):
            raise PydanticCustomError("invalid_parameter", "must be a list of distinct objective names")
        return heads


@dataclass
class EncodedVectorPair:
    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    preference: list[int]  # one label per head, in head order
    prompt_truncated: bool = False
    response_truncated: bool = False


def head_logps(lm: nn.Module, heads: Sequence[nn.Module], batch: SequenceBatch, chunk_size: int = 1024,
               autocast_dtype: torch.dtype | None = None, active: Sequence[bool] | None = None) -> Tensor:
    """[K, N] summed response log-probs of every row under every head; one backbone pass, and the vocabulary
    projection only at response positions, ``chunk_size`` at a time. Inactive heads give zeros, uncomputed."""
    path = hidden_state_head(lm)
    if path is None:
        raise ValueError("mah_dpo needs a causal LM whose logits are a linear map of its last hidden state")
    decoder, _ = path
    device = batch.input_ids.device
    autocast = torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    with autocast:
        hidden = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         use_cache=False).last_hidden_state
    scored = batch.target_mask[:, 1:]  # position t predicts token t+1
    selected, targets = hidden[:, :-1][scored], batch.input_ids[:, 1:][scored]
    n_rows = batch.input_ids.shape[0]
    row_of = torch.arange(n_rows, device=device)[:, None].expand_as(scored)[scored]
    out = []
    for k, head in enumerate(heads):
        sums = torch.zeros(n_rows, device=device, dtype=torch.float32)
        if active is None or active[k]:
            parts = []
            for start in range(0, selected.shape[0], chunk_size):
                with autocast:
                    logits = head(selected[start:start + chunk_size])
                parts.append(token_logps(logits.float(), targets[start:start + chunk_size]))
            if parts:
                sums = sums.index_add(0, row_of, torch.cat(parts))
        out.append(sums)
    return torch.stack(out)


@register_method("mah_dpo", params=MahDpoParams)
class MahDpoMethod(Method):
    """Parameters: :class:`MahDpoParams`, e.g. ``objectives: [{name: mah_dpo, beta: 0.1, heads: [correct, safe,
    brief]}]``. Data: ``data.train`` is ``synthetic`` (vectors from per-family objectives, see
    :func:`alignkit.data.synthetic.derived.vector_for`) or pairs with a ``preferences`` column (see
    :func:`alignkit.data.readers.load_vector_pairs`)."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        params = method_params(config, MahDpoParams)
        self.weight = config.objectives[0].weight
        self.beta = params.beta
        self.head_names: list[str] | None = list(params.heads) if params.heads is not None else None
        self.perturbation_scale = params.perturbation_scale
        # Perturbed initial heads differ from the output layer, which is all a precomputed table can score.
        self.precomputable_reference = self.perturbation_scale == 0
        if not self.precomputable_reference and config.reference == "precomputed":
            raise ValueError("mah_dpo: with perturbation_scale > 0 each reference head has its own weights; "
                             "use reference: copy or adapter, not precomputed")
        self.ref_heads: list[nn.Module] = []

    # ------------------------------------------------------------ data

    def load(self, tokenizer, run_dir: Path, log: Callable[[str], None]) -> tuple[list, list]:
        data = self.config.data

        def from_synthetic(pairs: list[PreferencePair]) -> list[PreferencePair]:
            # configured heads pick a subset of the synthetic objectives (SYNTHETIC_OBJECTIVES)
            objectives = {name: families for name, families in SYNTHETIC_OBJECTIVES.items()
                          if self.head_names is None or name in self.head_names}
            if self.head_names is not None and set(self.head_names) - set(objectives):
                raise ValueError(f"mah_dpo: the synthetic data labels the objectives {list(SYNTHETIC_OBJECTIVES)}; "
                                 f"heads {sorted(set(self.head_names) - set(objectives))} would get no labels")
            return make_vector_pairs(pairs, objectives)

        def read(source: str) -> list[PreferencePair]:
            return load_vector_pairs(source, self.head_names, column_map=data.column_map, on_invalid=data.on_invalid,
                                     rejected_rows_path=rejected_rows_path(run_dir, self.config, source), log=log)

        train, evaluation = read_splits(self.config, from_synthetic, read)
        if self.head_names is None:
            self.head_names = sorted({name for p in train for name in p.metadata["preferences"]})
        unknown = sorted({n for p in train + evaluation for n in p.metadata["preferences"]} - set(self.head_names))
        if unknown:
            raise ValueError(f"mah_dpo: the data labels objectives {unknown} that are not among heads "
                             f"{self.head_names}")
        encoder = prompt_encoder(tokenizer, self.config)
        head_names = self.head_names

        def encode(pair: PreferencePair) -> EncodedVectorPair:
            e = encode_pair(encoder, pair.prompt, pair.chosen, pair.rejected, pair.system, data.max_length,
                            data.max_prompt_length)
            vector = [int(pair.metadata["preferences"].get(name, 0)) for name in head_names]
            return EncodedVectorPair(e.prompt, e.chosen, e.rejected, vector, e.prompt_truncated, e.response_truncated)

        encoded = encode_splits((train, evaluation), encode, data.max_length, log)
        counts = {name: sum(item.preference[k] != 0 for item in encoded[0]) for k, name in enumerate(self.head_names)}
        log(f"data: {len(train)} train and {len(evaluation)} eval vector-labelled pairs; labels per head: {counts}")
        return encoded[0], encoded[1]

    def reference_rows(self, items: list) -> Rows:
        """Two rows per pair, in index order: (prompt, chosen), (prompt, rejected)."""
        rows: Rows = []
        for item in items:
            rows += [(item.prompt, item.chosen), (item.prompt, item.rejected)]
        return rows

    # ------------------------------------------------------------ model

    def wrap_model(self, model: nn.Module) -> nn.Module:
        assert self.head_names is not None, "load() runs before wrap_model()"
        multi = MultiHeadLM(model, len(self.head_names), self.perturbation_scale, seed=self.config.seed)
        self.ref_heads = [copy.deepcopy(h).requires_grad_(False) for h in multi.extra_heads]
        return multi

    def export(self, model: nn.Module, final_dir: Path) -> nn.Module:
        assert isinstance(model, MultiHeadLM) and self.head_names is not None
        save_heads(model, self.head_names, final_dir)
        return model.lm

    # ------------------------------------------------------------ loss

    def head_logps(self, ctx: BatchContext, items: list, indices: list[int], precomputed
                   ) -> tuple[Tensor, Tensor, Tensor, int]:
        """(policy [K, 2B], reference [K, 2B], preference [K, B], tokens fed); chosen rows first."""
        multi: MultiHeadLM = getattr(ctx.model, "module", ctx.model)
        batch_items = [items[i] for i in indices]
        rows = [(p.prompt, p.chosen) for p in batch_items] + [(p.prompt, p.rejected) for p in batch_items]
        batch = collate(rows, ctx.pad_id).to(ctx.device)
        preference = torch.tensor([p.preference for p in batch_items], device=ctx.device).t()
        active = (preference != 0).any(dim=1).tolist()  # heads nobody in the batch is labelled on add nothing
        policy = head_logps(multi.lm, multi.heads, batch, ctx.chunk_size, ctx.autocast_dtype, active)
        if self.precomputable_reference:  # every initial head is the output layer: one reference row per row
            if precomputed is not None:
                idx = torch.tensor(indices)
                single = torch.cat([precomputed.lookup(2 * idx), precomputed.lookup(2 * idx + 1)]).to(ctx.device)
            elif ctx.reference is not None:
                single = ctx.reference.logps(batch).logps
            else:
                raise ValueError("mah_dpo needs a reference model")
            reference = single[None].expand(len(multi.heads), -1)
        else:
            reference = self.reference_head_logps(ctx, batch, active)
        return policy, reference, preference, batch.num_tokens

    def reference_head_logps(self, ctx: BatchContext, batch: SequenceBatch, active: list[bool]) -> Tensor:
        ref = ctx.reference
        if ref is None:
            raise ValueError("mah_dpo needs a reference model")
        lm = ref.model
        disabled = lm.disable_adapter() if isinstance(ref, AdapterDisabledReference) else nullcontext()
        was_training = lm.training
        lm.eval()
        try:
            with torch.no_grad(), disabled:
                heads = [lm.get_output_embeddings(), *self.ref_heads]
                return head_logps(lm, heads, batch, ctx.chunk_size, ctx.autocast_dtype, active)
        finally:
            lm.train(was_training)

    def loss(self, policy: Tensor, reference: Tensor, preference: Tensor) -> tuple[Tensor, dict[str, float]]:
        n = preference.shape[1]
        out = mah_dpo_loss(policy[:, :n], policy[:, n:], reference[:, :n], reference[:, n:], preference,
                           self.beta, self.head_names)
        loss = self.weight * out.loss.mean()
        metrics = {key: float(value) for key, value in out.metrics.items()}
        with torch.no_grad():  # over every labelled (objective, pair), the way DPO's metrics are over pairs
            sign = preference.float()
            margin = self.beta * sign * ((policy[:, :n] - reference[:, :n]) - (policy[:, n:] - reference[:, n:]))
            labelled = sign != 0
            metrics["rewards/margins"] = margin[labelled].mean().item() if labelled.any() else 0.0
            metrics["rewards/accuracies"] = (margin[labelled] > 0).float().mean().item() if labelled.any() else 0.0
        metrics["loss"] = loss.item()
        return loss, metrics

    def step(self, ctx: BatchContext, items: list, indices: list[int], precomputed, state: dict,
             training: bool) -> StepOutput:
        policy, reference, preference, num_tokens = self.head_logps(ctx, items, indices, precomputed)
        loss, metrics = self.loss(policy, reference, preference)
        return StepOutput(loss, metrics, num_tokens)

    def evaluate(self, ctx: BatchContext, items: list, batch_size: int, precomputed, state: dict
                 ) -> dict[str, float]:
        """Per-head metrics over the whole eval set at once (a head's labels are spread unevenly over batches)."""
        was_training = ctx.model.training
        ctx.model.eval()
        chosen, rejected, prefs = [], [], []
        with torch.no_grad():
            for start in range(0, len(items), batch_size):
                indices = list(range(start, min(start + batch_size, len(items))))
                policy, reference, preference, _ = self.head_logps(ctx, items, indices, precomputed)
                n = len(indices)
                chosen.append((policy[:, :n], reference[:, :n]))
                rejected.append((policy[:, n:], reference[:, n:]))
                prefs.append(preference)
        ctx.model.train(was_training)
        cat = lambda parts, i: torch.cat([p[i] for p in parts], dim=1)  # noqa: E731
        policy = torch.cat([cat(chosen, 0), cat(rejected, 0)], dim=1)
        reference = torch.cat([cat(chosen, 1), cat(rejected, 1)], dim=1)
        _, metrics = self.loss(policy, reference, torch.cat(prefs, dim=1))
        return metrics


# ---------------------------------------------------------------- saving and loading the heads


def save_heads(model: MultiHeadLM, head_names: Sequence[str], directory: Path) -> Path:
    """``mah_dpo_heads.safetensors``: heads 1..K−1 (head 0 is saved with the model) and the head names."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for k, head in enumerate(model.extra_heads, start=1):
        for name, value in head.state_dict().items():
            tensors[f"heads.{k}.{name}"] = value.detach().cpu().contiguous()
    meta = {"head_names": json.dumps(list(head_names)), "num_heads": str(model.num_heads)}
    path = directory / HEADS_FILE
    save_file(tensors, str(path), metadata=meta)
    return path


def load_multihead(path: str | Path, dtype: str = "float32", device: str = "cpu", log: Callable[[str], None] = print
                   ) -> tuple[MultiHeadLM, object]:
    """(model, tokenizer) from a MAH-DPO final directory; ``model.head_names`` lists the objectives in head order.

    Decode with a head mixture: ``with model.ensemble_head(head_weights(model, {"safe": 2, "brief": 1})):
    model.lm.generate(...)`` (weights are normalised to sum 1; a one-hot vector selects one head).
    """
    from alignkit.models import load_model

    path = Path(path)
    heads_path = path / HEADS_FILE
    if not heads_path.is_file():
        raise FileNotFoundError(f"{heads_path} not found: is {path} the final directory of a mah_dpo run?")
    with safe_open(str(heads_path), framework="pt") as handle:
        meta = handle.metadata() or {}
    lm, tokenizer = load_model(str(path), dtype=dtype, device=device, log=log)
    model = MultiHeadLM(lm, int(meta["num_heads"]))
    state = load_file(str(heads_path), device=str(next(lm.parameters()).device))
    for k, head in enumerate(model.extra_heads, start=1):
        head.load_state_dict({name.split(".", 2)[2]: value for name, value in state.items()
                              if name.startswith(f"heads.{k}.")})
    model.head_names = json.loads(meta["head_names"])
    return model.eval(), tokenizer


def head_weights(model: MultiHeadLM, weights: Mapping[str, float]) -> list[float]:
    """A weight vector in head order from ``{objective: weight}`` (unnamed heads get 0)."""
    names: list[str] = getattr(model, "head_names", None) or [f"head{k}" for k in range(model.num_heads)]
    unknown = sorted(set(weights) - set(names))
    if unknown:
        raise ValueError(f"unknown heads {unknown}; this model's heads are {names}")
    return [float(weights.get(name, 0.0)) for name in names]
