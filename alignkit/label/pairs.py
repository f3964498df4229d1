"""What an annotator labels: pairs of responses to one prompt, read from anything the data readers accept.

* preference pairs in any shape :func:`alignkit.data.load_records` reads (TRL columns, conversations,
  HH-RLHF transcripts): the two responses are shown, the annotator decides which is better (the file's own
  ``chosen``/``rejected`` order is ignored, and never reveals itself through the left/right order);
* ``alignkit generate`` output (a ``prompt`` and a ``candidates`` list of ``{"text": ...}``) or ranked
  groups (``responses``): every pair of distinct candidates of a prompt, or ``max_pairs_per_prompt`` of them
  drawn with a seeded generator.

Every pair has a stable ``pair_id`` (a hash of prompt, system and the two responses), so a restarted server
recognises what an annotator already labelled even if the input file was re-ordered.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alignkit.data import DataError, read_rows
from alignkit.data.convert import RowContext, build_record
from alignkit.data.records import PreferencePair, RankedGroup, Text


@dataclass(frozen=True)
class LabelPair:
    """Two responses to one prompt; ``indices`` are their positions in the input row (0 = ``chosen`` of a
    preference pair, i = candidate i of a generation row)."""

    pair_id: str
    prompt: Text
    system: str | None
    responses: tuple[Text, Text]
    indices: tuple[int, int]
    source_row: int


def plain(value: Text) -> Any:
    """A record's text as JSON (message lists become plain dicts)."""
    return value if isinstance(value, str) else [m.model_dump() for m in value]


def pair_id(prompt: Text, system: str | None, first: Text, second: Text) -> str:
    """A stable id that does not depend on which response came first."""
    sides = sorted(json.dumps(plain(r), sort_keys=True, ensure_ascii=False) for r in (first, second))
    key = json.dumps([plain(prompt), system, *sides], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def _group_of_row(data: dict[str, Any], ctx: RowContext) -> PreferencePair | RankedGroup:
    """A generation row (``candidates``), a ranked group (``responses``) or a preference pair."""
    if "candidates" in data:
        candidates = data["candidates"]
        if not isinstance(candidates, list) or not all(isinstance(c, dict) and "text" in c for c in candidates):
            raise ctx.error("candidates must be a list of {\"text\": ...} objects (alignkit generate output)",
                            field="candidates")
        row = {k: v for k, v in data.items() if k in ("prompt", "system")}
        data = {**row, "responses": [c["text"] for c in candidates], "scores": [0.0] * len(candidates)}
    if "responses" in data:
        if "scores" not in data and "ranks" not in data:  # unscored candidates: labelling is what scores them
            data = {**data, "scores": [0.0] * len(data["responses"]) if isinstance(data["responses"], list) else []}
        record = build_record(data, ctx, kind="ranked")
    else:
        record = build_record(data, ctx, kind="pair")
    assert isinstance(record, PreferencePair | RankedGroup)
    return record


def load_pairs(source: str | Path, *, max_pairs_per_prompt: int | None = None, seed: int = 0,
               column_map: dict[str, str] | None = None) -> list[LabelPair]:
    """Every pair to label in ``source``, in file order; a pair seen twice (same prompt and responses) once."""
    groups = read_rows(source, _group_of_row, column_map=column_map, log=None).records
    rng = random.Random(seed)
    pairs: list[LabelPair] = []
    seen: set[str] = set()
    for row, group in enumerate(groups):
        if isinstance(group, PreferencePair):
            responses, index_pairs = [group.chosen, group.rejected], [(0, 1)]
        else:
            responses = group.responses
            index_pairs = [(i, j) for i, j in itertools.combinations(range(len(responses)), 2)
                           if responses[i] != responses[j]]
            if max_pairs_per_prompt is not None and len(index_pairs) > max_pairs_per_prompt:
                index_pairs = sorted(rng.sample(index_pairs, max_pairs_per_prompt))
        for i, j in index_pairs:
            pid = pair_id(group.prompt, group.system, responses[i], responses[j])
            if pid not in seen:
                seen.add(pid)
                pairs.append(LabelPair(pid, group.prompt, group.system, (responses[i], responses[j]), (i, j), row))
    if not pairs:
        raise DataError("holds no pair of distinct responses to label", file=str(source))
    return pairs


def messages_of(prompt: Text, system: str | None) -> list[dict[str, str]]:
    """The prompt as a conversation for the page (the system prompt first)."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [m.model_dump() for m in prompt]
    return ([{"role": "system", "content": system}] if system else []) + turns


def text_of(response: Text) -> str:
    """A response for the page: a message list shows its turns' text one after another."""
    return response if isinstance(response, str) else "\n\n".join(m.content for m in response)


