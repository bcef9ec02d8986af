"""A local checkpoint's identity: a hash of its weights, computed once per file version."""

import hashlib
import json
import os
import shutil

import torch
from safetensors.torch import save_file

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


def test_sharded_weights_are_hashed_in_name_order(tmp_path, monkeypatch):
    """Every shard named by the index is covered: a change in any one is a new identity."""
    monkeypatch.setenv("LVLM_INTERPRET_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llava"}))
    names = ["model-00002-of-00002.safetensors", "model-00001-of-00002.safetensors"]
    for value, name in enumerate(names):
        save_file({f"w{value}": torch.full((4,), float(value))}, folder / name)
    index = {"weight_map": {"w0": names[0], "w1": names[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    source = check_model_source(str(folder))
    assert [p.name for p in source.weights] == sorted(names)
    joined = b"".join((folder / name).read_bytes() for name in sorted(names))
    first = weights_revision(source.weights)
    assert first == "sha256:" + hashlib.sha256(joined).hexdigest()[:16]
    save_file({"w0": torch.full((4,), 7.0)}, folder / names[0])  # the second shard changes
    assert weights_revision(check_model_source(str(folder)).weights) != first


def test_same_weights_are_one_model_wherever_they_are(tmp_path, demo_checkpoint, monkeypatch):
    """A copy of a checkpoint in another folder is the same model (name and weights hash)."""
    monkeypatch.setenv("LVLM_INTERPRET_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "elsewhere"
    shutil.copytree(demo_checkpoint, copy)
    original, moved = check_model_source(str(demo_checkpoint)), check_model_source(str(copy))
    assert (original.name, original.model_type) == (moved.name, moved.model_type)
    assert weights_revision(original.weights) == weights_revision(moved.weights)


def test_model_type_is_read_from_the_folder_config(tmp_path, demo_checkpoint):
    assert check_model_source(str(demo_checkpoint)).model_type == "llava"
    folder = tmp_path / "untyped"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": 3}')  # not a name: no type at all
    (folder / "model.safetensors").write_bytes(
        demo_checkpoint.joinpath("model.safetensors").read_bytes()
    )
    assert check_model_source(str(folder)).model_type is None
