"""A local checkpoint's identity: a hash of its weights, computed once per file version."""

import hashlib
import os

from engine.checkpoint import check_model_source, weights_revision


def test_weights_hash_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("LVLM_INTERPRET_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"weights v1")
    expected = "sha256:" + hashlib.sha256(b"weights v1").hexdigest()[:16]
    assert weights_revision((weights,)) == expected
    (entry,) = (tmp_path / "cache" / "weights-sha256").iterdir()
    entry.write_text("sha256:" + "0" * 16)  # a cached answer is used without reading weights
    assert weights_revision((weights,)) == "sha256:" + "0" * 16
    weights.write_bytes(b"weights v2")  # rewritten: new size and mtime, so hashed again
    os.utime(weights, ns=(1, 1))
    assert weights_revision((weights,)) == (
        "sha256:" + hashlib.sha256(b"weights v2").hexdigest()[:16]
    )


def test_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory would go")
    monkeypatch.setenv("LVLM_INTERPRET_CACHE", str(blocker))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"w")
    assert weights_revision((weights,)) == "sha256:" + hashlib.sha256(b"w").hexdigest()[:16]


def test_readable_name_comes_from_the_config_else_the_folder(tmp_path, demo_checkpoint):
    assert check_model_source(str(demo_checkpoint)).name == "lvlm-interpret/shapes-demo"
    copy = tmp_path / "my-model"
    copy.mkdir()
    (copy / "config.json").write_text("{}")
    (copy / "model.safetensors").write_bytes(
        demo_checkpoint.joinpath("model.safetensors").read_bytes()
    )
    source = check_model_source(str(copy))
    assert source.name == "my-model" and source.folder == copy
    assert check_model_source("llava-hf/llava-1.5-7b-hf").folder is None  # hub id: not read
