"""Hostile and mistaken input to ``lvlm-interpret record``, through the real console command.

Every case must end with exactly one ``error:`` line on stderr, exit code 2, no traceback and
nothing on stdout, and must be caught before the model loads: the command announces
``loading <model> ...`` on stderr when it starts loading, so one line means it never got there.
A store that existed before keeps its traces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.demo.world import make_scene
from store import TraceQuery, open_store
from store.synthetic import make_synthetic_trace

LVLM = Path(sys.executable).with_name("lvlm-interpret")
NOT_UTF8 = b"caf\xe9"  # Latin-1 bytes, as a shell in a Latin-1 locale would pass them


def run_cli(args: list[str | bytes | Path], cwd: Path, timeout: float = 300):
    env = os.environ | {
        "OMP_WAIT_POLICY": "PASSIVE",
        "HF_HUB_OFFLINE": "1",
        "LVLM_INTERPRET_CACHE": str(cwd / "cache"),
    }
    return subprocess.run(
        [str(LVLM), *map(os.fsencode, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result, *fragments: str) -> str:
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 2, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr and result.stdout == b""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An image, a store holding one trace, and a copy of the demo checkpoint to damage."""
    root = tmp_path_factory.mktemp("hostile")
    make_scene(3).image.save(root / "scene.png")
    with open_store(root / "store", writable=True) as opened:
        opened.add(make_synthetic_trace())
    return root


@pytest.fixture
def broken_model(tmp_path, demo_checkpoint) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(demo_checkpoint, copy)
    return copy


def record_args(workdir: Path, model: Path | str, *extra: str | bytes) -> list:
    base = ["record", "--model", model, "--image", workdir / "scene.png", "--prompt", "Colour?"]
    return [*base, "--store", workdir / "store", *extra]


def assert_store_intact(workdir: Path) -> None:
    with open_store(workdir / "store") as opened:
        assert opened.query(TraceQuery()).total == 1


SETTINGS_CASES = {
    "prompt not UTF-8": (["--prompt", b"what " + NOT_UTF8], "The prompt"),
    "reference not UTF-8": (["--reference", NOT_UTF8], "reference answer"),
    "tag not UTF-8": (["--tag", NOT_UTF8], "The tag"),
    "tag with a control character": (["--tag", "a\x07b"], "control characters"),
    "sampling at temperature 0": (["--sample", "--temperature", "0"], "temperature"),
    "temperature inf": (["--temperature", "inf"], "temperature"),
    "temperature nan": (["--sample", "--temperature", "nan"], "temperature"),
    "seed 2**70": (["--seed", str(2**70)], "seed"),
    "negative seed": (["--seed", "-1"], "seed"),
    "top-p nan": (["--top-p", "nan"], "top_p"),
    "top-p above 1": (["--top-p", "1.5"], "top_p"),
    "max-new-tokens 0": (["--max-new-tokens", "0"], "max_new_tokens"),
    "lossy bogus": (["--lossy", "bogus"], "--lossy"),
    "dtype bogus": (["--dtype", "float8"], "--dtype"),
    "revision on a local folder": (["--revision", "bogus"], "hub ids only"),
    "missing option": (["--no-such-option"], "No such option"),
}


@pytest.mark.parametrize("case", list(SETTINGS_CASES))
def test_bad_settings(workdir, demo_checkpoint, case):
    extra, fragment = SETTINGS_CASES[case]
    result = run_cli(record_args(workdir, demo_checkpoint, *extra), workdir)
    assert_one_line_error(result, fragment)
    assert_store_intact(workdir)


def test_image_name_not_utf8(workdir, demo_checkpoint, tmp_path):
    image = Path(os.fsdecode(bytes(tmp_path) + b"/scene-" + NOT_UTF8 + b".png"))
    shutil.copy(workdir / "scene.png", image)
    args = record_args(workdir, demo_checkpoint)
    args[args.index(workdir / "scene.png")] = image
    assert_one_line_error(run_cli(args, workdir), "image file name", "\\xe9")


DEVICES = ["bogus", "cuda:64", "mps", "meta"]


@pytest.mark.parametrize("device", DEVICES)
def test_unusable_device(workdir, refusals, device):
    assert_one_line_error(
        refusals[f"device {device}"], "device" if device != "meta" else "not supported"
    )
    assert_store_intact(workdir)


def test_cuda_without_a_gpu(workdir, demo_checkpoint):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    result = run_cli(record_args(workdir, demo_checkpoint, "--device", "cuda"), workdir)
    assert_one_line_error(result, "0 CUDA device")


def _config_is_a_list(folder: Path) -> None:
    (folder / "config.json").write_text("[1, 2, 3]")


def _config_is_not_json(folder: Path) -> None:
    (folder / "config.json").write_bytes(b"\x00\xff{")


def _no_config(folder: Path) -> None:
    (folder / "config.json").unlink()


def _truncated_weights(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])


def _weights_not_safetensors(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")  # any bytes will do


def _no_weights(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def _missing_shard(folder: Path) -> None:
    index = {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


BROKEN_FOLDERS = {
    "config.json is a list": (_config_is_a_list, "not a JSON object"),
    "config.json is not JSON": (_config_is_not_json, "not readable JSON"),
    "no config.json": (_no_config, "no config.json"),
    "truncated safetensors": (_truncated_weights, "truncated"),
    "garbage safetensors": (_weights_not_safetensors, "truncated or not a safetensors"),
    "pickle checkpoint": (_pickle_only, "--allow-pickle"),
    "no weights": (_no_weights, "no weights"),
    "missing shard": (_missing_shard, "lacks weight shard"),
}


@pytest.mark.parametrize("case", list(BROKEN_FOLDERS))
def test_broken_checkpoint_folder(workdir, broken_model, case):
    damage, fragment = BROKEN_FOLDERS[case]
    damage(broken_model)
    result = run_cli(record_args(workdir, broken_model), workdir)
    assert_one_line_error(result, fragment)
    assert_store_intact(workdir)


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("./no/such/folder", "No folder"),
        ("not a hub id!", "not a hub id"),
        ("scene.png", "is a file"),
        (NOT_UTF8, "The model"),
        ("", "--model is empty"),
        (" ", "--model is empty"),
    ],
)
def test_model_that_names_nothing(workdir, model, fragment):
    assert_one_line_error(run_cli(record_args(workdir, model), workdir), fragment)


def test_store_that_is_a_file(workdir, demo_checkpoint, tmp_path):
    regular = tmp_path / "file"
    regular.write_text("notes")
    for store in (regular, regular / "below"):
        args = record_args(workdir, demo_checkpoint)
        args[args.index(workdir / "store")] = store
        assert_one_line_error(run_cli(args, workdir), "not a directory")
    assert regular.read_text() == "notes"


def test_store_inside_another_stores_data(workdir, demo_checkpoint):
    nested = workdir / "store" / "data" / "nested"
    args = record_args(workdir, demo_checkpoint)
    args[args.index(workdir / "store")] = nested
    assert_one_line_error(run_cli(args, workdir), "inside the data/ folder")
    assert not nested.exists()
    assert_store_intact(workdir)


DB_CASES = {
    "bogus": ("bogus", "not a database URL"),
    "postgresql without driver or server": ("postgresql://u@127.0.0.1:1/x", "--db"),
    "missing directory": ("sqlite:////no/such/dir/index.sqlite", "index"),
    "javascript": ("javascript:alert(1)", "not a database URL"),
    "file url": ("file:///etc/passwd", "--db"),
    "in-memory": ("sqlite://", "in-memory"),
}


DB_FILE_CASES = {"garbage file": "index", "another store's index": "another store"}


def _db_urls(folder: Path) -> dict[str, str]:
    """Every --db case's URL; the two file cases get their file in ``folder``."""
    garbage = folder / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    open_store(folder / "other", writable=True).close()
    return {
        **{case: url for case, (url, _) in DB_CASES.items()},
        "garbage file": f"sqlite:///{garbage}",
        "another store's index": f"sqlite:///{folder / 'other' / 'index.sqlite'}",
    }


@pytest.fixture(scope="module")
def refusals(workdir, demo_checkpoint, tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """The --device and --db refusals, each through its own console command, two or more
    at a time: each waits seconds on imports before it refuses, and one at a time left a
    core idle. Each case still has its own test (below) reading its result."""
    from concurrent.futures import ThreadPoolExecutor

    urls = _db_urls(tmp_path_factory.mktemp("db-cases"))
    cases = {f"device {d}": ["--device", d] for d in DEVICES}
    cases |= {f"db {case}": ["--db", url] for case, url in urls.items()}
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        runs = {
            name: pool.submit(run_cli, record_args(workdir, demo_checkpoint, *extra), workdir)
            for name, extra in cases.items()
        }
        return {name: run.result() for name, run in runs.items()}


@pytest.mark.parametrize("case", [*DB_CASES, *DB_FILE_CASES])
def test_malformed_db(workdir, refusals, case):
    fragment = DB_FILE_CASES.get(case) or DB_CASES[case][1]
    assert_one_line_error(refusals[f"db {case}"], fragment)
    assert_store_intact(workdir)


def test_read_only_index(workdir, demo_checkpoint):
    """``chattr +i``: even root cannot write the index (file modes do not stop root)."""
    index = workdir / "store" / "index.sqlite"
    if subprocess.run(["chattr", "+i", str(index)], capture_output=True).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        result = run_cli(record_args(workdir, demo_checkpoint), workdir)
    finally:
        subprocess.run(["chattr", "-i", str(index)], check=True)
    assert_one_line_error(result, "read-only")
    assert_store_intact(workdir)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["demo", "record", "--store", "scene.png", "--count", "1"], "not a directory"),
        (["demo", "record", "--count", "0"], "--count"),
        (["demo", "evaluate", "--checkpoint", "scene.png"], "is a file"),
    ],
)
def test_demo_commands_fail_in_one_line(workdir, args, fragment):
    assert_one_line_error(run_cli(args, workdir), fragment)
