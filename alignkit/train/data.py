"""Training data for a run: load records, split off eval, tokenize, and hand out batches in a resumable order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignkit.data.readers import load_records
from alignkit.data.records import BinaryFeedback, PreferencePair, RankedGroup
from alignkit.data.splits import split_and_cap
from alignkit.data.synthetic import make_synthetic
from alignkit.data.tokenize import (
    EncodedExample,
    EncodedPair,
    PromptEncoder,
    TruncationStats,
    encode_example,
    encode_pair,
)
from alignkit.train.config import TrainConfig


@dataclass
class RunData:
    train: list[PreferencePair] | list[BinaryFeedback]
    eval: list[PreferencePair] | list[BinaryFeedback]
    train_encoded: list[EncodedPair] | list[EncodedExample]
    eval_encoded: list[EncodedPair] | list[EncodedExample]


def prompt_encoder(tokenizer, config: TrainConfig) -> PromptEncoder:
    """The run's encoder: chat template on or off, and where a response ends (``data.response_end``)."""
    return PromptEncoder(tokenizer, config.data.use_chat_template, config.data.response_end)


def rejected_rows_path(run_dir, config: TrainConfig, source: str) -> Path:
    """Where the rows skipped from ``source`` go: one file per split, ``rejected_rows_train.jsonl`` or
    ``rejected_rows_eval.jsonl`` (written only when that split has rejections)."""
    split = "train" if source == config.data.train else "eval"
    return Path(run_dir) / f"rejected_rows_{split}.jsonl"


def load_source(source: str, config: TrainConfig, run_dir, log) -> list:
    """The records of one data source as the run's config reads them (kind, column map, invalid rows to the
    split's rejected-rows file), ranked groups expanded into their strict pairs."""
    records = load_records(source, kind=config.data.kind, column_map=config.data.column_map,
                           on_invalid=config.data.on_invalid,
                           rejected_rows_path=rejected_rows_path(run_dir, config, source), log=log).records
    expanded = []
    for record in records:  # ranked groups feed pairwise objectives as all their strict pairs
        expanded.extend(record.to_pairs() if isinstance(record, RankedGroup) else [record])
    return expanded


def pairs_to_binary(pairs: list[PreferencePair]) -> list[BinaryFeedback]:
    """Paired data for unpaired objectives (KTO, BCO): chosen is desirable, rejected undesirable."""
    out = []
    for pair in pairs:
        out.append(BinaryFeedback(prompt=pair.prompt, system=pair.system, completion=pair.chosen,
                                  label=True, metadata=pair.metadata))
        out.append(BinaryFeedback(prompt=pair.prompt, system=pair.system, completion=pair.rejected,
                                  label=False, metadata=pair.metadata))
    return out


def read_splits(config: TrainConfig, from_synthetic: Callable[[list[PreferencePair]], list],
                read: Callable[[str], list]) -> tuple[list, list]:
    """A run's train and eval records: the synthetic tasks' pairs through ``from_synthetic``, or ``data.train``
    and ``data.eval`` through ``read``. Without ``data.eval``, ``eval_fraction`` of train is held out (seeded);
    both splits are then capped by ``max_train_examples`` / ``max_eval_examples``."""
    data = config.data
    if data.train == "synthetic":
        syn = data.synthetic
        train_pairs, eval_pairs = make_synthetic(syn.n_train, syn.n_test, seed=syn.seed, families=syn.families)
        train, evaluation = from_synthetic(train_pairs), from_synthetic(eval_pairs)
    else:
        train, evaluation = read(data.train), read(data.eval) if data.eval else None
    return split_and_cap(train, evaluation, data.eval_fraction, config.seed, data.max_train_examples,
                         data.max_eval_examples)


def encode_splits(splits: Iterable[list], encode: Callable[[Any], Any], max_length: int,
                  log: Callable[[str], None]) -> list[list]:
    """``encode`` every record of every split, logging per split how many prompts/responses were truncated."""
    encoded = []
    for split in splits:
        stats = TruncationStats()
        items = [encode(record) for record in split]
        for item in items:
            stats.add(item)
        if stats.prompt_truncated or stats.response_truncated:
            log(f"truncation to max_length={max_length}: {stats.summary()}")
        encoded.append(items)
    return encoded


def load_run_data(config: TrainConfig, tokenizer, run_dir, unpaired: bool, log: Callable = print) -> RunData:
    data = config.data
    train, evaluation = read_splits(config, lambda pairs: pairs,
                                    lambda source: load_source(source, config, run_dir, log))
    if unpaired and train and isinstance(train[0], PreferencePair):
        train, evaluation = pairs_to_binary(train), pairs_to_binary(evaluation)
    encoder = prompt_encoder(tokenizer, config)
    encoded = encode_splits((train, evaluation),
                            lambda record: _encode(encoder, record, data.max_length, data.max_prompt_length),
                            data.max_length, log)
    log(f"data: {len(train)} train and {len(evaluation)} eval examples")
    return RunData(train, evaluation, encoded[0], encoded[1])


def _encode(encoder: PromptEncoder, record, max_length: int, max_prompt_length: int):
    if isinstance(record, PreferencePair):
        return encode_pair(encoder, record.prompt, record.chosen, record.rejected, record.system,
                           max_length, max_prompt_length)
    encoded = encode_example(encoder, record.prompt, record.completion, record.system, max_length,
                             max_prompt_length)
    encoded.label = record.label
    return encoded


def batch_order(n_examples: int, batch_size: int, seed: int, start: int = 0) -> Iterator[list[int]]:
    """Micro-batches of example indices, reshuffled each epoch from the seed; ``start`` skips batches
    already consumed so a resumed run sees exactly the batches an uninterrupted run would."""
    per_epoch = n_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"only {n_examples} training examples for batch_size={batch_size}")
    position = start
    while True:
        epoch, offset = divmod(position, per_epoch)
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
        permutation = torch.randperm(n_examples, generator=generator).tolist()
        for index in range(offset, per_epoch):
            yield permutation[index * batch_size:(index + 1) * batch_size]
            position += 1
