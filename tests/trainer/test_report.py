"""run.json helpers: atomic writes, hashes, plots."""

import json

import pytest

from kubetune.trainer.report import hash_paths, model_fingerprint, plot_loss, versions, write_json_atomic


def test_atomic_json_never_leaves_temp_files(tmp_path):
    write_json_atomic(tmp_path / "run.json", {"a": 1})
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "run.json", {("tuple", "key"): 1})  # not JSON-serializable
    assert json.loads((tmp_path / "run.json").read_text()) == {"a": 1}  # old content kept
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_hashes_change_with_content(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text("a\n")
    h1 = hash_paths([str(f)])[str(f)]
    f.write_text("b\n")
    assert hash_paths([str(f)])[str(f)] != h1
    d = tmp_path / "model"
    d.mkdir()
    (d / "w.bin").write_bytes(b"x" * 10)
    fp = model_fingerprint(str(d))
    (d / "w.bin").write_bytes(b"y" * 10)
    assert model_fingerprint(str(d)) != fp
    assert model_fingerprint("org/name").startswith("hub:")


def test_versions_lists_core_packages():
    v = versions()
    assert v["torch"] and v["transformers"] and v["peft"]


def test_plot(tmp_path):
    metrics = [
        {"event": "progress", "step": 1, "loss": 2.0},
        {"event": "progress", "step": 2, "loss": 1.0},
        {"event": "eval", "step": 2, "eval_loss": 1.2},
    ]
    assert plot_loss(metrics, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not plot_loss([], tmp_path / "none.png")
