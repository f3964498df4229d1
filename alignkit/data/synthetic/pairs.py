"""Deterministic train/test preference pairs from the synthetic task families, and their JSONL form."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

from alignkit.data.records import PreferencePair
from alignkit.data.synthetic.tasks import FAMILIES, TaskFamily
from alignkit.io import write_jsonl as write_rows

# A prompt belongs to the test split iff this hash bucket says so, independent of seed and sample order:
# train and test can never share a prompt, for any pair of seeds.
_TEST_BUCKETS = 5


def _is_test_prompt(prompt: str) -> bool:
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _TEST_BUCKETS == 0


def _task_id(family: str, prompt: str) -> str:
    # Content-addressed, so the same task has the same id in every split, seed and file.
    return f"{family}-{hashlib.sha256(prompt.encode('utf-8')).hexdigest()[:12]}"


def _sample_family(family: TaskFamily, n: int, seed: int, test: bool) -> list[PreferencePair]:
    # A stream per (seed, family, split): asking for a subset of families leaves each family's data unchanged.
    rng = random.Random(f"alignkit-synthetic/{seed}/{family.name}/{'test' if test else 'train'}")
    pairs: list[PreferencePair] = []
    seen: set[str] = set()
    for _ in range(n):
        candidate = None
        # Prefer unseen prompts; once a small prompt pool is used up, repeat prompts (with fresh responses).
        for _ in range(200):
            drawn = family.generate(rng)
            if _is_test_prompt(drawn[0]) == test:
                candidate = drawn
                if drawn[0] not in seen:
                    break
        if candidate is None:
            raise RuntimeError(f"family {family.name!r} produced no {'test' if test else 'train'} prompt")
        prompt, chosen, rejected = candidate
        seen.add(prompt)
        metadata = {"family": family.name, "task_id": _task_id(family.name, prompt)}
        pairs.append(PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, metadata=metadata))
    return pairs


def _split_evenly(n: int, k: int) -> list[int]:
    return [n // k + (1 if i < n % k else 0) for i in range(k)]


def make_synthetic(
    n_train: int = 2000, n_test: int = 200, seed: int = 0, families: list[str] | None = None
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic ``(train, test)`` preference pairs, balanced across ``families`` (default: all).

    Train and test never share a prompt. Each pair's metadata holds ``family`` and ``task_id``.
    """
    names = list(FAMILIES) if families is None else list(families)
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise ValueError(f"unknown synthetic families {unknown}; choose from {sorted(FAMILIES)}")
    if n_train < 0 or n_test < 0:
        raise ValueError("n_train and n_test must be >= 0")
    splits = []
    for n, test in ((n_train, False), (n_test, True)):
        pairs = [p for name, k in zip(names, _split_evenly(n, len(names)), strict=True)
                 for p in _sample_family(FAMILIES[name], k, seed, test)]
        # Interleave families so any prefix (a quick run, a small eval) is roughly balanced too.
        random.Random(f"alignkit-synthetic/{seed}/shuffle/{test}").shuffle(pairs)
        splits.append(pairs)
    return splits[0], splits[1]



def _jsonable(value: str | list) -> str | list[dict]:
    return value if isinstance(value, str) else [m.model_dump() for m in value]


def write_jsonl(pairs: list[PreferencePair], path: str | Path) -> Path:
    """Write TRL standard preference rows, atomically; metadata fields become extra top-level columns."""
    rows = []
    for pair in pairs:
        row = {key: _jsonable(getattr(pair, key)) for key in ("prompt", "chosen", "rejected")}
        if pair.system is not None:
            row["system"] = pair.system
        for key, value in pair.metadata.items():
            row.setdefault(key, value)
        rows.append(row)
    return write_rows(path, rows)
