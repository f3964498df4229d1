"""Data: typed feedback records, readers with row-level validation, tokenization, synthetic tasks."""

from alignkit.data.errors import DataError
from alignkit.data.readers import LoadResult, load_records
from alignkit.data.records import (
    BinaryFeedback,
    Judgment,
    Message,
    PreferencePair,
    RankedGroup,
    Record,
)
from alignkit.data.synthetic import FAMILIES, family_of, make_synthetic, verify, write_jsonl
from alignkit.data.tokenize import PromptEncoder, encode_example, encode_pair

__all__ = [
    "FAMILIES",
    "BinaryFeedback",
    "DataError",
    "Judgment",
    "LoadResult",
    "Message",
    "PreferencePair",
    "PromptEncoder",
    "RankedGroup",
    "Record",
    "encode_example",
    "encode_pair",
    "family_of",
    "load_records",
    "make_synthetic",
    "verify",
    "write_jsonl",
]
