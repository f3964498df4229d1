"""Where rows come from: file formats, saved datasets and the Hub, turned into raw rows.

:func:`iter_rows` yields one :class:`Row` per row of a source (a dict of its columns, or the
:class:`DataError` that kept it from being read), located as precisely as the format allows: a 1-based line
for JSONL and CSV, a 0-based row for JSON arrays, parquet and ``datasets``. Damage that loses rows we cannot
see (a truncated gzip, a broken JSON array, a corrupt parquet file) is raised, never yielded: it cannot be
skipped. Turning a row into a record is :mod:`alignkit.data.convert`'s job.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from alignkit.data.errors import DataError, RowUnit, type_name

__all__ = ["Format", "Row", "detect_format", "iter_rows"]

Format = Literal["jsonl", "json", "csv", "parquet", "disk", "hub"]

_GZIP_MAGIC = b"\x1f\x8b"
_BOM = b"\xef\xbb\xbf"
_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class Row:
    """One raw row from a source: its position, its columns, or the error that stopped it being read."""

    row: int
    data: dict[str, Any] | None
    error: DataError | None = None
    raw: Any = None
    unit: RowUnit = "line"


def _strip_gz(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def detect_format(source: str | Path, format: str | None = None) -> str:
    """``format`` if given (checked), else from the extension (``.jsonl``, ``.json``, ``.csv``, ``.parquet``,
    each optionally ``.gz``), a ``datasets.save_to_disk`` directory, or else a Hub dataset id."""
    if format is not None:
        if format not in get_args(Format):
            raise ValueError(f"format must be one of {list(get_args(Format))}, got {format!r}")
        return format
    path = Path(source)
    if path.is_dir():
        if any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "disk"
        raise DataError("is a directory but not a dataset saved by datasets.save_to_disk", file=str(source))
    ext = _strip_gz(path)
    if ext in _EXTENSIONS:
        if not path.exists():
            raise DataError("file not found", file=str(source))
        return _EXTENSIONS[ext]
    if path.exists():
        raise DataError(f"cannot tell the format from the extension {''.join(path.suffixes)!r}; "
                        f"pass format= one of {list(get_args(Format))}", file=str(source))
    text = str(source)
    if text.startswith(("/", ".", "~")) or "\\" in text or text.count("/") > 1:
        raise DataError("file not found (and it does not look like a Hub dataset id)", file=text)
    return "hub"


def iter_rows(source: str | Path, fmt: str, split: str = "train") -> Iterator[Row]:
    """Every row of ``source`` read as ``fmt`` (see :func:`detect_format`); ``split`` picks the split of a
    saved ``DatasetDict`` or a Hub dataset."""
    name = str(source)
    if fmt == "jsonl":
        return _iter_jsonl(Path(source), name)
    if fmt == "json":
        return _iter_json(Path(source), name)
    if fmt == "csv":
        return _iter_csv(Path(source), name)
    if fmt == "parquet":
        return _iter_parquet(Path(source), name)
    if fmt == "disk":
        return _iter_dataset(_load_disk(Path(source), name, split))
    return _iter_dataset(_load_hub(name, split))


# ---------------------------------------------------------------------------------------------- bytes


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _open_bytes(path: Path, name: str):
    try:
        return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    except OSError as exc:
        raise DataError(f"cannot open: {exc}", file=name) from exc


def _corrupt(name: str, lines: int, exc: BaseException) -> DataError:
    return DataError(f"gzip stream is truncated or corrupt after {lines} complete lines were read ({exc}); "
                     "rows after that point are lost, so this cannot be skipped: re-download or re-create "
                     "the file", file=name)


# EOFError: stream cut mid-member; BadGzipFile: bad header/CRC; zlib.error: damaged deflate data.
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _read_all(path: Path, name: str) -> bytes:
    """Whole file, decompressed; a damaged gzip is reported with how far it got."""
    chunks, lines = [], 0
    with _open_bytes(path, name) as fh:
        try:
            while chunk := fh.read(1 << 20):
                chunks.append(chunk)
                lines += chunk.count(b"\n")
        except _GZIP_ERRORS as exc:
            raise _corrupt(name, lines, exc) from exc
    return b"".join(chunks)


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at column {exc.start + 1} "
                        "(is the file in another encoding?)", file=name, row=lineno) from exc


def _loads(text: str) -> Any:
    """``json.loads`` whose every failure is a ValueError naming the problem: besides malformed text, an
    integer over Python's digit limit (a ValueError) and nesting deeper than the recursion limit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} at column {exc.colno}") from exc
    except RecursionError:
        raise ValueError("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc


def _parse_json_object(text: str, name: str, row: int, unit: RowUnit) -> dict[str, Any]:
    try:
        value = _loads(text)
    except ValueError as exc:
        raise DataError(str(exc), file=name, row=row, unit=unit) from exc
    if not isinstance(value, dict):
        raise DataError(f"expected a JSON object, got {type_name(value)}", file=name, row=row, unit=unit)
    return value


# ---------------------------------------------------------------------------------------------- formats


def _iter_jsonl(path: Path, name: str, lines: Iterator[bytes] | None = None) -> Iterator[Row]:
    # Bytes in, decoded line by line, so one bad byte costs one row and is located exactly.
    fh = None
    if lines is None:
        fh = _open_bytes(path, name)
        lines = iter(fh)
    lineno = 0
    try:
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _GZIP_ERRORS as exc:
                raise _corrupt(name, lineno, exc) from exc
            lineno += 1
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                text = _decode_line(raw, name, lineno)
                yield Row(lineno, _parse_json_object(text, name, lineno, "line"))
            except DataError as exc:
                yield Row(lineno, None, exc, raw.decode("utf-8", "backslashreplace").rstrip("\r\n"))
    finally:
        if fh is not None:
            fh.close()


def _iter_json(path: Path, name: str) -> Iterator[Row]:
    data = _read_all(path, name)
    if data.startswith(_BOM):
        data = data[3:]
    if not data.lstrip().startswith(b"["):
        # Many datasets ship JSON Lines under a .json name; datasets.load_dataset("json") accepts both.
        yield from _iter_jsonl(path, name, iter(io.BytesIO(data)))
        return
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"not valid UTF-8: byte 0x{data[exc.start]:02x}", file=name, row=line) from exc
    try:
        items = _loads(text)
    except ValueError as exc:
        # One broken array loses every row after the error, so this is never skippable.
        cause = exc.__cause__
        line = cause.lineno if isinstance(cause, json.JSONDecodeError) else None
        raise DataError(str(exc), file=name, row=line) from exc
    for index, item in enumerate(items):
        if isinstance(item, dict):
            yield Row(index, item, unit="row")
        else:
            error = DataError(f"expected a JSON object, got {type_name(item)}", file=name, row=index, unit="row")
            yield Row(index, None, error, item, unit="row")


def _has_surrogates(value: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in value)


def _unescape(value: Any) -> Any:
    if isinstance(value, str) and _has_surrogates(value):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def _iter_csv(path: Path, name: str) -> Iterator[Row]:
    data = _read_all(path, name)
    # Quoted CSV fields may span lines, so decode the whole file; surrogateescape keeps undecodable bytes
    # visible so the row holding them can be rejected on its own.
    text = data.decode("utf-8-sig", "surrogateescape")
    previous_limit = csv.field_size_limit(2**31 - 1)  # the 128 KiB default would reject long rows here,
    try:                                               # before max_chars can report them properly
        reader = csv.reader(io.StringIO(text, newline=""))
        try:
            header = next(reader, None)
        except csv.Error as exc:
            raise DataError(f"malformed CSV header: {exc}", file=name, row=1) from exc
        if header is None:
            return
        header = [h.strip() for h in header]
        if any(_has_surrogates(h) for h in header):
            raise DataError("not valid UTF-8 in the header", file=name, row=1)
        while True:
            start = reader.line_num + 1
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"malformed CSV: {exc}", file=name, row=start) from exc
            if not values or (len(values) == 1 and not values[0].strip()):
                continue
            raw = {h: _unescape(v) for h, v in zip(header, values, strict=False)}
            if len(values) != len(header):
                error = DataError(f"has {len(values)} values but the header has {len(header)} columns",
                                  file=name, row=start)
                yield Row(start, None, error, [_unescape(v) for v in values])
                continue
            bad = next((h for h, v in zip(header, values, strict=True) if _has_surrogates(v)), None)
            if bad is not None:
                error = DataError("not valid UTF-8 (is the file in another encoding?)", file=name,
                                  row=start, field=bad)
                yield Row(start, None, error, raw)
                continue
            yield Row(start, {h: _from_csv_cell(v) for h, v in zip(header, values, strict=True)}, raw=raw)
    finally:
        csv.field_size_limit(previous_limit)


def _from_csv_cell(value: str) -> Any:
    """CSV has only strings: read JSON lists/objects (message lists, scores) and empty cells as missing."""
    stripped = value.strip()
    if not stripped:
        return None
    if stripped[0] in "[{":
        try:
            return _loads(stripped)
        except ValueError:
            return value
    return value


def _iter_parquet(path: Path, name: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"not a readable parquet file: {exc}", file=name) from exc
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield Row(index, row, unit="row")
                index += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"parquet file is corrupt after {index} rows were read: {exc}", file=name) from exc
    finally:
        parquet.close()


def _load_disk(path: Path, name: str, split: str):
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises a zoo of types for damaged directories
        raise DataError(f"cannot load the saved dataset: {exc}", file=name) from exc
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"has no split {split!r}; it has {sorted(loaded)}", file=name)
        loaded = loaded[split]
    return loaded


def _load_hub(name: str, split: str):
    import datasets

    try:
        loaded = datasets.load_dataset(name, split=split)
    except Exception as exc:  # network, auth, missing dataset or split: all mean "cannot read this source"
        raise DataError(f"not a local file, and loading it as a Hugging Face Hub dataset failed: {exc}",
                        file=name) from exc
    return loaded


def _iter_dataset(dataset) -> Iterator[Row]:
    for index, row in enumerate(dataset):
        yield Row(index, dict(row), unit="row")
