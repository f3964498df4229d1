"""The engine: turns a model plus token rows into numbers (log-probs, logits) or text (generation).

It imports nothing from ``train``, ``eval``, ``rewards``, ``decoding`` or ``objectives``; every one of them
builds on it. Modules: ``layouts`` (padded, shared-prefix, packed batches), ``logprobs`` (sequence and
token log-probs, response logits), ``exactness`` (whether the compact layouts are exact for a model),
``pairs`` (one scoring path for preference and joint pairs), ``generation`` (the one batched generator),
``heads`` (hidden states at each sequence's last token, for scalar heads).
"""

from alignkit.engine.exactness import layout_support
from alignkit.engine.generation import SamplingParams, generate, sample_ids
from alignkit.engine.heads import hidden_at, last_token_positions
from alignkit.engine.layouts import PackedBatch, SequenceBatch, build_groups, collate
from alignkit.engine.logprobs import SequenceLogps, response_logits, sequence_logps
from alignkit.engine.pairs import PairRows, PairScores, pair_batch, score_pair_batch, score_pairs

__all__ = ["PackedBatch", "PairRows", "PairScores", "SamplingParams", "SequenceBatch", "SequenceLogps",
           "build_groups", "collate", "generate", "hidden_at", "last_token_positions", "layout_support", "pair_batch",
           "response_logits", "sample_ids", "score_pair_batch", "score_pairs", "sequence_logps"]
