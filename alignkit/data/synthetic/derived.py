"""Synthetic data for the methods that need more than (prompt, chosen, rejected), derived from the synthetic
pairs and their verifiers; every derivation is deterministic in its inputs and seed.

* DOVE's joint pairs (:func:`make_joint_pairs`): Bansal et al., "Comparing Bad Apples to Good Oranges: Aligning
  Large Language Models via Joint Preference Optimization", arXiv:2404.00530.
* CUT's judgments (:func:`make_judgments`): Xu et al., "Reasons to Reject? Aligning Language Models with
  Judgments", Findings of ACL 2024, arXiv:2312.14591.
* MAH-DPO's preference vectors (:func:`make_vector_pairs`), one label per objective in
  ``metadata["preferences"]``: "Simultaneous Multi-objective Alignment Across Verifiable and Non-verifiable
  Rewards", arXiv:2510.01167.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from alignkit.data.records import JointPair, Judgment, PreferencePair
from alignkit.data.synthetic.facts import words
from alignkit.data.synthetic.tasks import FAMILIES, family_of, verify

__all__ = ["SYNTHETIC_OBJECTIVES", "judgment_for", "make_joint_pairs", "make_judgments", "make_vector_pairs",
           "vector_for"]


def make_joint_pairs(pairs: Sequence[PreferencePair], seed: int = 0, conditional_fraction: float = 0.5
                     ) -> list[JointPair]:
    """Joint pairs from synthetic pairs: pair i's (prompt, chosen), which passes its verifier, beats another
    pair's (prompt, rejected), which fails its own, so the two instructions differ.

    Partners follow one random cyclic shift of the pairs, so every prompt is the winner's once and the loser's
    once: the prompts' own likelihoods cannot separate winners from losers. ``conditional_fraction`` of the
    pairs stay conditional (same prompt), the union DOVE trains on.
    """
    if not 0.0 <= conditional_fraction <= 1.0:
        raise ValueError(f"conditional_fraction must be in [0, 1], got {conditional_fraction}")
    n = len(pairs)
    rng = random.Random(f"alignkit-dove/{seed}/{n}")
    order = list(range(n))
    rng.shuffle(order)
    partner = {order[i]: order[(i + 1) % n] for i in range(n)}
    out = []
    for i, pair in enumerate(pairs):
        other = pairs[partner[i]]
        joint = n > 1 and rng.random() >= conditional_fraction and other.prompt != pair.prompt
        loser = other if joint else pair
        out.append(JointPair(prompt_chosen=pair.prompt, chosen=pair.chosen, prompt_rejected=loser.prompt,
                             rejected=loser.rejected, system=pair.system,
                             metadata={"family_chosen": pair.metadata.get("family"),
                                       "family_rejected": loser.metadata.get("family")}))
    return out


def judgment_for(prompt: str, response: str) -> str | None:
    """A critique naming the instruction a synthetic response violates; None when it passes the verifier."""
    if verify(prompt, response):
        return None
    family = family_of(prompt)
    n = len(words(response))
    if family == "arithmetic":
        a, op, b = FAMILIES["arithmetic"].parse(prompt)  # type: ignore[attr-defined]
        text = f"The response does not give the correct result of {a} {op} {b}"
        return text + (", and it does not answer with just the number as instructed." if n > 1 else ".")
    if family == "format":
        kind, limit = FAMILIES["format"].instruction(prompt)  # type: ignore[attr-defined]
        return {
            "one_word": f'The response does not follow the instruction "Reply with exactly one word": it has {n} '
                        "words.",
            "upper": 'The response does not follow the instruction "Answer in uppercase letters only": it '
                     "contains lowercase letters.",
            "json": 'The response does not follow the instruction to reply in JSON with key "answer": it is not '
                    "a JSON object with that key.",
            "under": f'The response does not follow the instruction "Answer in under {limit} words": it has '
                     f"{n} words.",
        }[kind]
    if family == "refusal":
        return "The response helps with a harmful request instead of refusing it; it should decline."
    if family == "concise":
        max_words = FAMILIES["concise"].max_words  # type: ignore[attr-defined]
        if n > max_words:
            return f"The response is not brief as instructed: it has {n} words, where a short answer is asked for."
        return "The response does not state the correct answer to the question."
    return "The response does not follow the instruction."


def make_judgments(pairs: Sequence[PreferencePair]) -> list[Judgment]:
    """Two judgment records per synthetic pair: the chosen response judged fine (no judgment) and the rejected
    one with a critique from :func:`judgment_for`."""
    out = []
    for pair in pairs:
        assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
        for response in (pair.chosen, pair.rejected):
            out.append(Judgment(prompt=pair.prompt, response=response, system=pair.system,
                                judgment=judgment_for(pair.prompt, response), metadata=dict(pair.metadata)))
    return out


# Which synthetic families each objective judges; "brief" judges every pair by word count.
SYNTHETIC_OBJECTIVES: dict[str, tuple[str, ...]] = {
    "correct": ("arithmetic", "format", "concise"),
    "safe": ("refusal",),
    "brief": (),
}


def vector_for(pair: PreferencePair, objectives: Mapping[str, Sequence[str]] = SYNTHETIC_OBJECTIVES
               ) -> dict[str, int]:
    """The preference vector of a synthetic pair: +1 on the objectives of its family (chosen passes the
    verifier, rejected fails it), and on ``brief`` the sign of the word-count difference (0 when equal), which
    can disagree with the verifier (a long refusal against a short compliance)."""
    assert isinstance(pair.prompt, str) and isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
    family = family_of(pair.prompt)
    out = {}
    for name, families in objectives.items():
        if name == "brief":
            diff = len(words(pair.rejected)) - len(words(pair.chosen))
            out[name] = (diff > 0) - (diff < 0)
        else:
            out[name] = 1 if family in families else 0
    return out


def make_vector_pairs(pairs: Sequence[PreferencePair],
                      objectives: Mapping[str, Sequence[str]] = SYNTHETIC_OBJECTIVES) -> list[PreferencePair]:
    """Synthetic pairs with ``metadata["preferences"]`` from :func:`vector_for`; pairs labelled on nothing
    are dropped."""
    out = []
    for pair in pairs:
        vector = vector_for(pair, objectives)
        if any(vector.values()):
            out.append(pair.model_copy(update={"metadata": {**pair.metadata, "preferences": vector}}))
    return out
