"""Reading data files: .jsonl, .json, .csv (each optionally .gz) and .parquet, as (location, row) pairs.

The location is `file:line` (JSON lines, CSV), `file item i` (a JSON list) or `file row i` (Parquet), so
every problem found later in a row can name where it is. A file that is not what its name says ends in
one clear error.
"""

from __future__ import annotations

import csv
import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path

from lowtune.errors import LowtuneError


def read_file(path: Path) -> Iterator[tuple[str, dict]]:
    """The file's rows; a file that is not what its name says ends in one clear error."""
    try:
        yield from READERS[data_suffix(path)](path)
    except UnicodeDecodeError as e:
        raise LowtuneError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise LowtuneError(f"{path}: not a complete gzip file ({e})") from None
    except csv.Error as e:
        raise LowtuneError(f"{path}: not valid CSV ({e})") from None


def data_suffix(path: Path) -> str:
    """The format suffix, looking through a .gz: data.jsonl.gz -> .jsonl."""
    return Path(path.stem).suffix if path.suffix == ".gz" else path.suffix


def is_data_file(path: Path) -> bool:
    """Whether the name says a format lowtune reads (the file need not exist)."""
    return data_suffix(path) in READERS


def _open(path: Path, **kwargs):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", **kwargs)
    return path.open(encoding="utf-8", **kwargs)


def read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LowtuneError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(row, dict):
                raise LowtuneError(f"{path}:{n}: each line must be a JSON object, got {type(row).__name__}")
            yield f"{path}:{n}", row


def read_json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        with _open(path) as f:
            data = json.loads(f.read())
    except json.JSONDecodeError as e:
        raise LowtuneError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}
    if not isinstance(data, list):
        raise LowtuneError(f"{path}: expected a JSON list of objects (or use .jsonl)")
    for i, row in enumerate(data):
        if not isinstance(row, dict):
            raise LowtuneError(f"{path}: item {i} must be an object, got {type(row).__name__}")
        yield f"{path} item {i}", row


def read_csv(path: Path) -> Iterator[tuple[str, dict]]:
    with _open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield f"{path}:{reader.line_num}", dict(row)


def read_parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
        raise LowtuneError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    for i, row in enumerate(table.to_pylist()):
        yield f"{path} row {i}", row


READERS = {".jsonl": read_jsonl, ".json": read_json, ".csv": read_csv, ".parquet": read_parquet}
