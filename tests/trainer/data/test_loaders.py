"""Reading files keeps each record's location; broken input is reported by file and line."""

import json

import pytest

from kubetune.trainer.data.loaders import read_records
from kubetune.trainer.errors import DataError


def test_jsonl_line_numbers_skip_blank_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n\n{"text": "b"}\n')
    bad = []
    records = read_records([str(f)], bad)
    assert [r.where for r in records] == [f"{f}:1", f"{f}:3"] and not bad


def test_jsonl_malformed_and_non_object_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "a"}\n{"text": \n[1, 2]\n')
    bad = []
    records = read_records([str(f)], bad)
    assert len(records) == 1
    assert str(bad[0]).startswith(f"{f}:2: malformed JSON")
    assert str(bad[1]) == f"{f}:3: expected a JSON object, got list"


def test_json_list_and_wrapped_object(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"text": "x"}, {"text": "y"}]))
    b.write_text(json.dumps({"data": [{"text": "z"}], "version": 1}))
    records = read_records([str(a), str(b)], [])
    assert [r.values["text"] for r in records] == ["x", "y", "z"]
    assert records[1].where == f"{a}:record 2"


def test_json_syntax_error_has_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('[\n{"text": "x"},\n{"text" "y"}\n]')
    with pytest.raises(DataError, match=r"a.json:3: malformed JSON"):
        read_records([str(f)], [])


def test_csv_line_numbers_and_ragged_rows(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text('input,output\nhello,world\n"multi\nline",x\nonly-one-column\n')
    bad = []
    records = read_records([str(f)], bad)
    assert [r.values for r in records] == [
        {"input": "hello", "output": "world"},
        {"input": "multi\nline", "output": "x"},
    ]
    assert records[0].where == f"{f}:2"
    assert str(bad[0]) == f"{f}:5: expected 2 columns"


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(pa.table({"prompt": ["p1", "p2"], "completion": ["c1", "c2"]}), f)
    records = read_records([str(f)], [])
    assert records[1].values == {"prompt": "p2", "completion": "c2"} and records[1].where == f"{f}:record 2"


def test_saved_hf_dataset_dir(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_list([{"text": "a"}, {"text": "b"}]).save_to_disk(tmp_path / "ds")
    DatasetDict({"train": Dataset.from_list([{"text": "t"}])}).save_to_disk(tmp_path / "dd")
    assert [r.values["text"] for r in read_records([str(tmp_path / "ds")], [])] == ["a", "b"]
    assert [r.values["text"] for r in read_records([str(tmp_path / "dd")], [])] == ["t"]


def test_missing_unsupported_and_empty_paths(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_records([str(tmp_path / "nope.jsonl")], [])
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unsupported data file type '\.txt'"):
        read_records([str(tmp_path / "x.txt")], [])
    with pytest.raises(DataError, match="no training data"):
        read_records([], [])


def test_plain_directory_reads_every_supported_file_in_name_order(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "second"}\n')
    (tmp_path / "a.csv").write_text("text\nfirst\n")
    (tmp_path / "notes.md").write_text("ignored")
    records = read_records([str(tmp_path)], [])
    assert [r.values["text"] for r in records] == ["first", "second"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="directory has no"):
        read_records([str(empty)], [])
