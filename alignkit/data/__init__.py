"""Data: typed feedback records, readers with row-level validation, tokenization, synthetic tasks.

``formats`` reads files, saved datasets and the Hub into raw rows; ``convert`` turns a row into a validated
record; ``readers`` runs that loop with one error/skip policy (``read_rows``, ``load_records`` and the loaders
of the joint, SFT and preference-vector kinds); ``splits`` holds out an eval split; ``synthetic`` is the
built-in verifiable task data.
"""

from alignkit.data.errors import DataError
from alignkit.data.readers import (
    LoadResult,
    load_joint_pairs,
    load_records,
    load_sft_examples,
    load_vector_pairs,
    read_rows,
)
from alignkit.data.records import (
    BinaryFeedback,
    JointPair,
    Judgment,
    Message,
    PreferencePair,
    RankedGroup,
    Record,
    SFTExample,
)
from alignkit.data.synthetic import FAMILIES, family_of, make_synthetic, verify, write_jsonl
from alignkit.data.tokenize import PromptEncoder, encode_example, encode_pair

__all__ = [
    "FAMILIES",
    "BinaryFeedback",
    "DataError",
    "JointPair",
    "Judgment",
    "LoadResult",
    "Message",
    "PreferencePair",
    "PromptEncoder",
    "RankedGroup",
    "Record",
    "SFTExample",
    "encode_example",
    "encode_pair",
    "family_of",
    "load_joint_pairs",
    "load_records",
    "load_sft_examples",
    "load_vector_pairs",
    "make_synthetic",
    "read_rows",
    "verify",
    "write_jsonl",
]
