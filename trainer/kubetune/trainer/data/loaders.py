"""Read records from local files, keeping where each came from (`file:line`).

Line numbers matter: a user with a 50,000-line JSONL needs to be told which line
is broken, before any model is loaded. Formats: JSONL, JSON (a list, or an
object with one list field), CSV, Parquet, and a directory saved by
`datasets.save_to_disk`.

A data file may be hostile, so nothing here costs more than a bound: a JSONL line
is read at most RECORD_BYTES at a time (a longer one is one bad record, skipped
without holding it), nesting too deep for the parser is a bad record, not a
RecursionError, and a JSON or Parquet file may decode to at most FILE_BYTES.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import DataError

RECORD_BYTES = 64 << 20  # one JSONL line / Parquet row: far above any max_length of text
FILE_BYTES = 4 << 30  # a JSON file read whole, or a Parquet file decoded (its records are then held in memory)


@dataclass(frozen=True)
class Record:
    values: dict[str, Any]
    where: str  # "path:line" or "path:record N"


@dataclass
class BadRecord:
    where: str
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"


def _lines(fh: Any) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line, never holding more than RECORD_BYTES; None for a line longer than that."""
    lineno = 0
    while raw := fh.readline(RECORD_BYTES + 1):
        lineno += 1
        if len(raw) > RECORD_BYTES:
            while not raw.endswith(b"\n") and (raw := fh.readline(1 << 20)):
                pass  # skip the rest of the line in bounded pieces
            yield lineno, None
        else:
            yield lineno, raw


def _jsonl(path: Path, bad: list[BadRecord]) -> Iterator[Record]:
    # Bytes, decoded per line: one bad byte spoils one record (named by line), not the whole file.
    with path.open("rb") as fh:
        for lineno, raw in _lines(fh):
            where = f"{path}:{lineno}"
            if raw is None:
                bad.append(BadRecord(where, f"line longer than {RECORD_BYTES >> 20} MiB"))
                continue
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                bad.append(BadRecord(where, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"))
                continue
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append(BadRecord(where, f"malformed JSON: {exc.msg} (column {exc.colno})"))
                continue
            except RecursionError:
                bad.append(BadRecord(where, "JSON nested too deeply to parse"))
                continue
            if not isinstance(value, dict):
                bad.append(BadRecord(where, f"expected a JSON object, got {type(value).__name__}"))
                continue
            yield Record(value, where)


def _json(path: Path, bad: list[BadRecord]) -> Iterator[Record]:
    if path.stat().st_size > FILE_BYTES:
        raise DataError(f"{path}: a JSON file is read whole and this one is over {FILE_BYTES >> 30} GiB; use JSONL")
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to parse") from None
    if isinstance(value, dict):
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a list of records or an object with exactly one list field")
        value = lists[0]
    if not isinstance(value, list):
        raise DataError(f"{path}: expected a list of records, got {type(value).__name__}")
    for index, item in enumerate(value):
        where = f"{path}:record {index + 1}"
        if isinstance(item, dict):
            yield Record(item, where)
        else:
            bad.append(BadRecord(where, f"expected a JSON object, got {type(item).__name__}"))


def _csv(path: Path, bad: list[BadRecord]) -> Iterator[Record]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        try:
            if not reader.fieldnames:
                raise DataError(f"{path}:1: CSV file has no header row")
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    bad.append(BadRecord(where, f"expected {len(reader.fieldnames)} columns"))
                    continue
                yield Record(dict(row), where)
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: unreadable CSV: {exc}") from None


def _parquet(path: Path, bad: list[BadRecord]) -> Iterator[Record]:
    import pyarrow.parquet as pq

    index, decoded = 0, 0
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=256)  # one bounded batch in memory at a time
        for batch in batches:
            decoded += batch.nbytes
            if decoded > FILE_BYTES:
                raise DataError(f"{path}: decodes to over {FILE_BYTES >> 30} GiB; split it into smaller files")
            for row in batch.to_pylist():
                index += 1
                yield Record(row, f"{path}:record {index}")
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: unreadable Parquet file: {exc}") from None


def _hf_dir(path: Path, bad: list[BadRecord]) -> Iterator[Record]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except Exception as exc:
        raise DataError(f"{path}: not a dataset saved with datasets.save_to_disk: {exc}") from None
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise DataError(f"{path}: DatasetDict without a 'train' split (has {sorted(ds)})")
        ds = ds["train"]
    for index, row in enumerate(ds):
        yield Record(dict(row), f"{path}:record {index + 1}")


def _is_saved_dataset(path: Path) -> bool:
    return any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json"))


READERS = {".jsonl": _jsonl, ".ndjson": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}


def read_records(paths: list[str], bad: list[BadRecord]) -> list[Record]:
    """All records of all files, in order. Unparseable records go to `bad`."""
    if not paths:
        raise DataError("data.path: no training data given (set data.path, DATA_PATH or --data)")
    records: list[Record] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise DataError(f"{path}: no such file or directory (data.path)")
        if path.is_dir() and not _is_saved_dataset(path):
            # A plain directory (e.g. the /data mount): every supported file in it, in name order.
            files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix.lower() in READERS)
            if not files:
                raise DataError(
                    f"{path}: directory has no {', '.join(sorted(READERS))} files and is not a saved dataset"
                )
            records.extend(read_records([str(f) for f in files], bad))
            continue
        if path.is_dir():
            reader = _hf_dir
        else:
            reader = READERS.get(path.suffix.lower())
            if reader is None:
                raise DataError(
                    f"{path}: unsupported data file type '{path.suffix}' (use .jsonl, .json, .csv, .parquet "
                    "or a saved dataset directory)"
                )
        records.extend(_read_file(reader, path, bad))
    return records


def _read_file(reader: Any, path: Path, bad: list[BadRecord]) -> list[Record]:
    """One file's records; undecodable or unreadable files become one line naming the file, not a traceback."""
    try:
        return list(reader(path, bad))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save it as UTF-8"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
