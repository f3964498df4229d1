"""Fixture writers for the data-layer tests: tiny files in every supported format, built in tmp_path."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

HH_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hh-rlhf-harmless-test-first1000.jsonl.gz"


@pytest.fixture
def pair_rows() -> list[dict]:
    return [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5", "agreement": 0.9, "user_id": "u1"},
        {"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon", "agreement": 0.7,
         "user_id": "u2"},
        {"prompt": "Say hi", "chosen": "Hi!", "rejected": "No.", "agreement": 1.0, "user_id": "u1"},
    ]


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write rows (dicts are JSON-encoded, bytes/str are written verbatim) one per line."""

    def write(rows: list, name: str = "data.jsonl", gz: bool = False) -> Path:
        lines = []
        for row in rows:
            if isinstance(row, bytes):
                lines.append(row)
            elif isinstance(row, str):
                lines.append(row.encode("utf-8"))
            else:
                lines.append(json.dumps(row).encode("utf-8"))
        data = b"\n".join(lines) + b"\n"
        path = tmp_path / name
        path.write_bytes(gzip.compress(data) if gz else data)
        return path

    return write


@pytest.fixture
def write_csv(tmp_path: Path) -> Callable[..., Path]:
    def write(rows: list[dict], name: str = "data.csv") -> Path:
        path = tmp_path / name
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                # Lists/objects (message lists, scores) go in as JSON text, the way people store them in CSV.
                writer.writerow({k: json.dumps(v) if isinstance(v, list | dict) else v
                                 for k, v in row.items()})
        return path

    return write


@pytest.fixture
def write_parquet(tmp_path: Path) -> Callable[..., Path]:
    def write(rows: list[dict], name: str = "data.parquet") -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = tmp_path / name
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path

    return write


@pytest.fixture
def hh_data() -> Path:
    if not HH_DATA.exists():
        pytest.skip(f"shared HH-RLHF sample not found at {HH_DATA} (it lives outside the repo, in ../shared)")
    return HH_DATA
