"""RPS: robust preference selection by directional neighbourhood consensus (Mao et al., "Robust Preference
Alignment via Directional Neighborhood Consensus", ICLR 2026, arXiv:2510.20498).

A user preference is a **direction** ``v = (cos θ, sin θ)`` in the plane of a two-objective reward
``r(x, y) = (r_1, r_2)`` (two ``--reward`` specs: two reward models, two verifiers, ...), and the user's utility
is ``v · r``. A preference-conditioned policy is told the direction in its system message (Directional
Preference Alignment style: "maximise a·v_1 + b·v_2"), or in the prompt for models trained without one.
Directions far from those seen in training are served poorly; RPS, training-free:

1. builds a neighbourhood of k directions ``θ_j = θ* + δ_j`` around the target ``θ*``, evenly spaced within the
   angular radius Δ and including ``θ*`` itself (:func:`neighbourhood`);
2. generates one response per direction, ``y_j ~ π(· | x, v_j)`` (all of a batch's rows in one engine call);
3. scores each with the reward vector and keeps ``argmax_j v* · r(x, y_j)``: the alignment with the *target*
   direction, whatever direction produced the response (ties: the higher log-prob, then the earlier one).

The baseline (``rps_baseline``) draws k samples all conditioned on ``v*`` (one prefill, KV cache repeated) and
selects the same way: best-of-k at the target direction. The paper's abstract gives the procedure; the spacing
of the δ_j, the defaults (k = 5, Δ = 30°) and the instruction's wording are alignkit's reconstruction. Selecting
and evaluating with the same reward favours reward hacking: evaluate with a held-out judge as well.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignkit.data.tokenize import prompt_messages
from alignkit.decoding.base import Context, Decoded, register, select_best
from alignkit.decoding.strategies import SAMPLING, Item, encode_prompts, sample_candidates, sampling_params

INSTRUCTION = ("Weigh two objectives in your answer as the direction ({v1:.2f}, {v2:.2f}): "
               "maximise {a} × {v1:.2f} + {b} × {v2:.2f}.")


def neighbourhood(k: int, radius: float) -> list[float]:
    """k angular offsets δ_j (degrees) within [−Δ, Δ]: 0 (the target itself) first, then ±Δ·i/m outwards
    (m = ⌈(k−1)/2⌉). Odd k gives k evenly spaced angles from −Δ to Δ; even k drops the last −Δ."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    m = math.ceil((k - 1) / 2)
    offsets = [0.0]
    for i in range(1, m + 1):
        offsets += [radius * i / m, -radius * i / m]
    return offsets[:k]


def direction(angle: float) -> tuple[float, float]:
    """The unit vector at ``angle`` degrees."""
    rad = math.radians(angle)
    return math.cos(rad), math.sin(rad)


def projection(vector: Sequence[float], angle: float) -> float:
    """v · r for the unit direction v at ``angle`` degrees."""
    v1, v2 = direction(angle)
    return v1 * vector[0] + v2 * vector[1]


def conditioned(item: Item, angle: float, names: Sequence[str], default_system: str | None,
                in_prompt: bool) -> Item:
    """The prompt as messages with the direction stated in the system message (added, or appended to the one
    there) or, with ``in_prompt``, before the last user message."""
    prompt, system = item
    v1, v2 = direction(angle)
    line = INSTRUCTION.format(v1=v1, v2=v2, a=names[0], b=names[1])
    messages = [dict(m) for m in prompt_messages(prompt, system if system is not None else default_system)]
    if in_prompt:
        user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
        if user is None:
            raise ValueError("rps: the prompt has no user message to state the direction in")
        messages[user]["content"] = f"{line}\n\n{messages[user]['content']}"
    elif messages and messages[0]["role"] == "system":
        messages[0]["content"] = f"{messages[0]['content']}\n\n{line}"
    else:
        messages.insert(0, {"role": "system", "content": line})
    return messages, None


def objective_names(ctx: Context) -> tuple[str, str]:
    names = ctx.settings.rps_objectives or tuple(ctx.reward.names)
    if len(ctx.reward.sources) != 2:  # a judge is a single source, and cannot be combined with others
        raise ValueError(f"strategy 'rps' needs a two-objective reward: give two --reward specs (got "
                         f"{len(ctx.reward.sources)})")
    return names[0], names[1]


@register("rps", needs_reward=True,
          settings=("rps_k", "rps_angle", "rps_radius", "rps_baseline", "rps_objectives", "rps_in_prompt",
                    *SAMPLING),
          summary="k directions around the target in a two-objective reward, one response each, the best v*·r kept")
def rps(ctx: Context, items: Sequence[Item]) -> list[Decoded]:
    s = ctx.settings
    names = objective_names(ctx)
    offsets = [0.0] * s.rps_k if s.rps_baseline else neighbourhood(s.rps_k, s.rps_radius)
    params = sampling_params(ctx, True)
    if s.rps_baseline:  # k samples of the target-conditioned prompt from one prefill
        rows = [conditioned(it, s.rps_angle, names, s.system, s.rps_in_prompt) for it in items]
        groups = sample_candidates(ctx, encode_prompts(ctx, rows), params, s.rps_k)
    else:  # one sample per neighbouring direction
        rows = [conditioned(it, s.rps_angle + d, names, s.system, s.rps_in_prompt) for it in items for d in offsets]
        flat = [g[0] for g in sample_candidates(ctx, encode_prompts(ctx, rows), params)]
        groups = [flat[i * s.rps_k:(i + 1) * s.rps_k] for i in range(len(items))]
    vectors = ctx.reward.score_vectors([p for p, _ in items for _ in range(s.rps_k)],
                                       [c.text for g in groups for c in g])
    out = []
    for i, group in enumerate(groups):
        for j, c in enumerate(group):
            r = vectors[i * s.rps_k + j]
            c.reward = projection(r, s.rps_angle)  # the target direction's utility, whichever direction produced it
            c.scores.update({"reward_1": r[0], "reward_2": r[1], "rps_offset": offsets[j],
                             "rps_angle": s.rps_angle + offsets[j]})
        best = select_best([c.reward for c in group], [c.logp for c in group])
        out.append(Decoded(group, best, sum(c.tokens for c in group)))
    return out
