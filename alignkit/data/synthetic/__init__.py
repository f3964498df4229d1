"""Synthetic verifiable preference tasks: the embedded default dataset.

Every family generates ``(prompt, chosen, rejected)`` deterministically from a ``random.Random`` and has a
programmatic verifier, so the effect of preference training can be measured exactly (verifier pass rate
under greedy decoding) without a judge model. The tasks are sized for a ~135M chat model trained for a few
hundred LoRA steps on CPU: prompts and responses are short, chosen and rejected differ by one strong,
consistent surface property (brevity, case, JSON, refusal), and the untrained model fails often enough that
improvement is visible.

Families are identified from the prompt text alone, so ``verify(prompt, response)`` works on generations
from any model without carrying metadata around.

* :mod:`~alignkit.data.synthetic.facts`: the facts the format and concise families ask about;
* :mod:`~alignkit.data.synthetic.tasks`: the families and their verifiers (:data:`FAMILIES`, :func:`verify`);
* :mod:`~alignkit.data.synthetic.pairs`: train/test pairs (:func:`make_synthetic`) and :func:`write_jsonl`;
* :mod:`~alignkit.data.synthetic.derived`: joint pairs, judgments and preference vectors derived from them.
"""

from alignkit.data.synthetic.derived import (
    SYNTHETIC_OBJECTIVES,
    judgment_for,
    make_joint_pairs,
    make_judgments,
    make_vector_pairs,
    vector_for,
)
from alignkit.data.synthetic.facts import FACTS, Fact
from alignkit.data.synthetic.pairs import make_synthetic, write_jsonl
from alignkit.data.synthetic.tasks import FAMILIES, Arithmetic, Concise, Format, Refusal, TaskFamily, family_of, verify

__all__ = [
    "FACTS",
    "FAMILIES",
    "SYNTHETIC_OBJECTIVES",
    "Arithmetic",
    "Concise",
    "Fact",
    "Format",
    "Refusal",
    "TaskFamily",
    "family_of",
    "judgment_for",
    "make_joint_pairs",
    "make_judgments",
    "make_synthetic",
    "make_vector_pairs",
    "vector_for",
    "verify",
    "write_jsonl",
]
