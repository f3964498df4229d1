"""Read feedback data from files, saved datasets or the Hub into validated records.

Every row is checked and every problem is reported as a :class:`DataError` naming the file, the line
(JSONL/CSV, 1-based) or row (JSON arrays, parquet, ``datasets``; 0-based) and the field. With
``on_invalid="skip"`` bad rows are set aside instead, counted, and optionally written out for inspection;
damage that loses rows we cannot see (a truncated gzip) is always fatal.

:func:`read_rows` is the one row-reading loop: it takes any per-row builder from :mod:`alignkit.data.convert`
(or your own) and applies the error/skip policy. :func:`load_records` reads the ``pair``, ``binary``,
``judgment`` and ``ranked`` kinds through it; :func:`load_joint_pairs` (DOVE), :func:`load_sft_examples`
(PoFT) and :func:`load_vector_pairs` (MAH-DPO) read the other kinds the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from alignkit.data.convert import (
    FIELDS,
    JOINT_FIELDS,
    SFT_FIELDS,
    RowContext,
    build_joint_pair,
    build_record,
    build_sft_example,
    build_vector_pair,
    check_column_map,
)
from alignkit.data.errors import DataError
from alignkit.data.formats import detect_format, iter_rows
from alignkit.data.records import JointPair, PreferencePair, RankedGroup, Record, SFTExample
from alignkit.io import write_jsonl

__all__ = ["FIELDS", "DataError", "LoadResult", "load_joint_pairs", "load_records", "load_sft_examples",
           "load_vector_pairs", "read_rows"]

Kind = Literal["pair", "binary", "judgment", "ranked"]
OnInvalid = Literal["error", "skip"]
R = TypeVar("R")


@dataclass
class LoadResult(Generic[R]):
    """The records read, how many rows were read and skipped, and the skipped rows (``file``, ``row``,
    ``field``, ``error``, ``raw``). ``n_tied_groups`` counts ranked groups that yield no preference pair
    because all their scores tie."""

    records: list[R]
    n_read: int
    n_skipped: int
    rejected: list[dict] = field(default_factory=list)
    n_tied_groups: int = 0


def read_rows(
    source: str | Path,
    build: Callable[[dict[str, Any], RowContext], R],
    *,
    format: str | None = None,
    column_map: Mapping[str, str] | None = None,
    split: str = "train",
    on_invalid: OnInvalid = "error",
    rejected_rows_path: Path | None = None,
    log: Callable[[str], None] | None = print,
) -> LoadResult[R]:
    """``build(row, ctx)`` every row of ``source`` into a record; ``build`` raises ``ctx.error(...)`` for a
    bad row.

    With ``on_invalid="error"`` the first bad row raises its :class:`DataError`; with ``"skip"`` bad rows are
    counted, logged once, and written to ``rejected_rows_path`` (only when there are any). A source with no
    rows, or only bad ones, is always an error: training on nothing must not start.
    """
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    column_map = dict(column_map or {})
    name = str(source)
    fmt = detect_format(source, format)

    records: list[R] = []
    rejected: list[dict] = []
    n_read = 0
    for item in iter_rows(source, fmt, split):
        n_read += 1
        try:
            if item.error is not None:
                raise item.error
            assert item.data is not None
            records.append(build(item.data, RowContext(name, item.row, item.unit, column_map)))
        except DataError as exc:
            if on_invalid == "error":
                raise
            rejected.append({"file": name, "row": item.row, "field": exc.field, "error": str(exc),
                             "raw": item.raw if item.raw is not None else item.data})

    if n_read == 0:
        raise DataError("is empty: it holds no rows", file=name)
    if rejected:
        if rejected_rows_path is not None:
            write_jsonl(rejected_rows_path, [_jsonable(entry) for entry in rejected])
        if log is not None:
            where = f"see {rejected_rows_path}" if rejected_rows_path is not None else \
                f"first: {rejected[0]['error']}"
            log(f"skipped {len(rejected)} of {n_read} rows of {name} as invalid; {where}")
        if not records:
            # Returning an empty dataset would let a training run start on nothing.
            raise DataError(f"all {n_read} rows are invalid; first: {rejected[0]['error']}", file=name)
    return LoadResult(records=records, n_read=n_read, n_skipped=len(rejected), rejected=rejected)


def _jsonable(value: Any) -> Any:
    """A rejected row as JSON that can be written as UTF-8: undecodable text (lone surrogates from a JSON
    escape) is backslash-escaped, and values JSON has no type for (dates, bytes from parquet) become text."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_jsonable(str(k)): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return _jsonable(str(value))


def load_records(
    source: str | Path,
    kind: Kind = "pair",
    *,
    format: str | None = None,
    column_map: dict[str, str] | None = None,
    split: str = "train",
    on_invalid: OnInvalid = "error",
    max_chars: int = 100_000,
    rejected_rows_path: Path | None = None,
    log: Callable[[str], None] | None = print,
) -> LoadResult[Record]:
    """Load ``source`` as records of ``kind``, validating every row.

    ``format`` is detected from the extension (``.jsonl``, ``.json``, ``.csv``, ``.parquet``, each optionally
    ``.gz``), a ``datasets.save_to_disk`` directory, or else ``source`` is taken as a Hub dataset id.
    ``column_map`` maps our field name to the source column (``{"chosen": "pos"}``). A ``.json`` file holding
    JSON Lines rather than an array is read as JSONL, as ``datasets`` does. Ranked groups whose scores all
    tie yield no preference pairs; they are counted in ``n_tied_groups`` and logged.
    """
    if kind not in FIELDS:
        raise ValueError(f"kind must be one of {sorted(FIELDS)}, got {kind!r}")
    check_column_map(column_map, FIELDS[kind], f"kind={kind!r}")
    result = read_rows(source, functools.partial(build_record, kind=kind, max_chars=max_chars), format=format,
                       column_map=column_map, split=split, on_invalid=on_invalid,
                       rejected_rows_path=rejected_rows_path, log=log)
    if kind == "ranked":
        result.n_tied_groups = sum(1 for group in result.records
                                   if isinstance(group, RankedGroup) and next(group.pair_indices(), None) is None)
        if result.n_tied_groups and log is not None:
            log(f"{result.n_tied_groups} of {len(result.records)} ranked groups of {source} yield no preference "
                "pairs: all their scores tie")
    return result


def load_joint_pairs(source: str | Path, *, column_map: Mapping[str, str] | None = None,
                     on_invalid: OnInvalid = "error", rejected_rows_path: Path | None = None,
                     log: Callable[[str], None] | None = print) -> list[JointPair]:
    """Joint preference pairs (DOVE). Each row is one of:

    * ``prompt_chosen``, ``chosen``, ``prompt_rejected``, ``rejected`` (strings or message lists);
    * ``chosen`` and ``rejected`` as two whole conversations, each ending with its assistant turn(s), whose
      user turns may differ;
    * any ordinary preference pair (``prompt``/``chosen``/``rejected``, HH-RLHF transcripts...): a
      conditional pair, the special case of equal prompts.
    """
    check_column_map(column_map, JOINT_FIELDS, "kind='joint'")
    return read_rows(source, build_joint_pair, column_map=column_map, on_invalid=on_invalid,
                     rejected_rows_path=rejected_rows_path, log=log).records


def load_sft_examples(source: str | Path, *, column_map: Mapping[str, str] | None = None,
                      on_invalid: OnInvalid = "error", rejected_rows_path: Path | None = None,
                      log: Callable[[str], None] | None = print) -> list[SFTExample]:
    """SFT examples (PoFT): rows with ``prompt`` and ``response`` (or ``completion``, or a lone ``chosen``),
    or preference pairs, whose ``chosen`` response is the target."""
    check_column_map(column_map, SFT_FIELDS, "kind='sft'")
    return read_rows(source, build_sft_example, column_map=column_map, on_invalid=on_invalid,
                     rejected_rows_path=rejected_rows_path, log=log).records


def load_vector_pairs(source: str | Path, heads: Sequence[str] | None = None, *,
                      column_map: Mapping[str, str] | None = None, on_invalid: OnInvalid = "error",
                      rejected_rows_path: Path | None = None, log: Callable[[str], None] | None = print
                      ) -> list[PreferencePair]:
    """Preference pairs with a label per objective (MAH-DPO) in a ``preferences`` column, kept in ``metadata``
    (see :func:`alignkit.data.convert.parse_preferences`); ``heads`` limits the objectives a row may name."""
    check_column_map(column_map, FIELDS["pair"], "kind='pair'")
    return read_rows(source, functools.partial(build_vector_pair, heads=heads), column_map=column_map,
                     on_invalid=on_invalid, rejected_rows_path=rejected_rows_path, log=log).records
