"""Prompt files, for ``alignkit generate`` and ``alignkit eval --prompts``: a ``.txt`` file (one a line), any
file ``alignkit.data`` reads with a ``prompt`` column (JSONL, JSON, CSV, Parquet; text or chat messages), or
preference data (the prompt of each pair, in any shape the pair reader accepts: TRL columns, conversations,
HH-RLHF transcripts)."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

from alignkit.data.convert import RowContext, build_record
from alignkit.data.readers import read_rows
from alignkit.data.records import PreferencePair, Text

_PAIR_COLUMNS = ("chosen", "rejected")


def _prompt_of_row(data: dict[str, Any], ctx: RowContext) -> tuple[Text, str | None]:
    column = ctx.column_map.get("prompt", "prompt")
    if all(ctx.column_map.get(c, c) in data for c in _PAIR_COLUMNS):
        record = build_record(data, ctx, kind="pair")
        assert isinstance(record, PreferencePair)
        return record.prompt, record.system
    value = data.get(column)
    if isinstance(value, str) and value.strip():
        return value, data.get("system") if isinstance(data.get("system"), str) else None
    if isinstance(value, list) and value and all(isinstance(m, dict) and "content" in m for m in value):
        return value, None
    raise ctx.error("expected a non-empty 'prompt' (text or chat messages), or 'chosen' and 'rejected' "
                    "preference columns", field="prompt")


def load_prompts(source: str | Path, *, column_map: dict[str, str] | None = None, limit: int | None = None,
                 log=None) -> list[tuple[Text, str | None]]:
    """(prompt, system) per item of ``source``, in file order; ``limit`` keeps the first ones."""
    path = Path(source)
    if path.name.removesuffix(".gz").endswith(".txt"):
        if not path.is_file():
            raise FileNotFoundError(f"prompt file {source} not found")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            items: list[tuple[Text, str | None]] = [(line.strip(), None) for line in handle if line.strip()]
        if not items:
            raise ValueError(f"prompt file {source} holds no prompts")
    else:
        if not path.exists() and path.suffix:
            raise FileNotFoundError(f"prompt file {source} not found")
        items = read_rows(source, _prompt_of_row, column_map=column_map, log=log).records
    return items[:limit] if limit is not None else items
