"""record-dataset: manifests checked row by row before loading, resumable recording, flat memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli import app
from engine.dataset import ManifestError, read_manifest
from engine.demo.world import make_scene, write_manifest
from store import StoreError, TraceQuery, open_store

runner = CliRunner()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A manifest folder with two images, and an image outside it."""
    root = tmp_path / "data"
    root.mkdir()
    make_scene(1).image.save(root / "a.png")
    make_scene(2).image.save(root / "b.png")
    make_scene(3).image.save(tmp_path / "outside.png")
    (root / "notes.png").write_text("not an image")
    return root


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_bad_rows_are_reported_by_line_and_left_out(folder: Path, tmp_path: Path):
    manifest = write_jsonl(
        folder / "m.jsonl",
        [
            {"image": "a.png", "prompt": "Colour?", "reference": "red", "tags": ["x"]},
            {"image": "../outside.png", "prompt": "Colour?"},
            {"image": str(tmp_path / "outside.png"), "prompt": "Colour?"},
            {"image": "missing.png", "prompt": "Colour?"},
            {"image": "notes.png", "prompt": "Colour?"},
            "{not json",
            {"image": "a.png", "prompt": "Colour?", "colour": "red"},
            {"image": "a.png", "prompt": "Colour?", "boxes": [[4, 4, 2, 8]]},
            {"image": "a.png", "prompt": ""},
            {"image": ["a.png", "b.png"], "prompt": "Same?", "boxes": [[0, 0, 8, 8]]},
        ],
    )
    read = read_manifest(manifest)
    assert [(r.line, r.images, r.reference, r.tags) for r in read.rows] == [
        (1, (folder / "a.png",), "red", ("x",)),
        (10, (folder / "a.png", folder / "b.png"), None, ()),
    ]
    assert read.rows[1].annotations == {"boxes": [[0.0, 0.0, 8.0, 8.0]]}
    reasons = {p.line: p.reason for p in read.problems}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert "outside the manifest's folder" in reasons[2]
    assert "absolute image path" in reasons[3]
    assert "not found" in reasons[4] and "not a readable image" in reasons[5]
    assert "not JSON" in reasons[6] and "unknown field(s) colour" in reasons[7]
    assert "x0 < x1" in reasons[8]
    outside = read_manifest(manifest, allow_outside=True)
    assert {r.line for r in outside.rows} == {1, 2, 3, 10}


def test_a_link_out_of_the_folder_is_outside(folder: Path, tmp_path: Path):
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    manifest = write_jsonl(folder / "m.jsonl", [{"image": "link.png", "prompt": "Colour?"}])
    with pytest.raises(ManifestError, match="outside the manifest's folder"):
        read_manifest(manifest)


def test_csv_and_folder_manifests(folder: Path):
    csv_file = folder / "m.csv"
    csv_file.write_text(
        'image,prompt,reference,tags,boxes\na.png,Colour?,red,x; y,"[[1, 2, 3, 4]]"\n'
        "b.png,Shape?,,,\nb.png,Shape?,,,[oops\n"
    )
    read = read_manifest(csv_file)
    assert [(r.line, r.reference, r.tags) for r in read.rows] == [
        (2, "red", ("x", "y")),
        (3, None, ()),
    ]
    assert read.rows[0].annotations == {"boxes": [[1.0, 2.0, 3.0, 4.0]]}
    assert [(p.line, p.reason) for p in read.problems] == [(4, "the boxes column is not JSON")]
    images = read_manifest(folder, "What shape?")
    assert [r.images[0].name for r in images.rows] == ["a.png", "b.png"]
    assert [p.line for p in images.problems] == [3]  # notes.png, third in name order


@pytest.mark.parametrize(
    ("make", "prompt", "fragment"),
    [
        (lambda d: d / "none.jsonl", None, "manifest not found"),
        (lambda d: d, None, "give the prompt"),
        (lambda d: d / "a.png", None, ".jsonl or .csv"),
        (lambda d: write_jsonl(d / "m.jsonl", ["[]"]), None, "no valid row"),
        (
            lambda d: write_jsonl(d / "m.jsonl", [{"image": "a.png", "prompt": "x"}]),
            "y",
            "--prompt",
        ),
    ],
)
def test_unusable_manifests(folder: Path, make, prompt, fragment):
    with pytest.raises(ManifestError, match=fragment):
        read_manifest(make(folder), prompt)


def test_unusable_manifest_exits_2_before_anything_is_created(folder: Path, demo_checkpoint):
    store = folder.parent / "store"
    args = ["record-dataset", str(folder / "none.jsonl"), "--model", str(demo_checkpoint)]
    result = runner.invoke(app, [*args, "--store", str(store)])
    assert result.exit_code == 2 and "manifest not found" in result.output
    assert not store.exists()


def test_record_dataset_is_resumable(tmp_path: Path, demo_checkpoint):
    """A re-run records nothing new; an extra bad row is reported and the rest recorded."""
    manifest = write_manifest(tmp_path / "m", count=5, seed=7)
    store = tmp_path / "store"
    args = ["record-dataset", str(manifest), "--model", str(demo_checkpoint)]
    args += ["--store", str(store), "--no-relevancy", "--tag", "run1"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "recorded 5, already stored 0, failed 0, invalid rows 0" in first.output
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    with open_store(store) as opened:
        items = opened.query(TraceQuery()).items
        assert len(items) == 5
        assert {i.prompt for i in items} == {r["prompt"] for r in rows}
        for item in items:
            row = next(
                r for r in rows if r["prompt"] == item.prompt and r["image"] == item.image_name
            )
            assert item.reference_answer == row["reference"]
            assert set(item.tags) == {*row["tags"], "run1"}
            assert item.extra.get("annotations", {}).get("boxes") == row.get("boxes")
        right = opened.query(TraceQuery(correct=True)).total
        wrong = opened.query(TraceQuery(correct=False)).total
        assert right + wrong == 5
        assert right == sum(i.answer == i.reference_answer for i in items)
    whole = (manifest.parent / rows[0]["image"]).read_bytes()
    (manifest.parent / "cut.png").write_bytes(whole[: len(whole) // 2])  # header reads, body not
    with manifest.open("a") as extra:
        extra.write('{"image": "missing.png", "prompt": "Colour?"}\n')
        extra.write('{"image": "cut.png", "prompt": "Colour?"}\n')
        extra.write(json.dumps({"image": rows[0]["image"], "prompt": "How many?"}) + "\n")
    again = runner.invoke(app, args)
    assert again.exit_code == 1, again.output
    assert "line 6: skipped: image file not found" in again.output
    assert "line 7: failed: cut.png is not a readable image" in again.output
    assert "recorded 1, already stored 5, failed 1, invalid rows 1" in again.output
    with open_store(store) as opened:
        assert opened.query(TraceQuery()).total == 6


def test_ctrl_c_loses_at_most_the_trace_in_flight(tmp_path: Path, demo_checkpoint):
    from tests.engine.test_cli_hostile import LVLM

    manifest = write_manifest(tmp_path / "m", count=60, seed=5)
    store = tmp_path / "store"
    args = [str(LVLM), "record-dataset", str(manifest), "--model", str(demo_checkpoint)]
    args += ["--store", str(store), "--no-relevancy"]
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    run = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not _stored(store) and time.monotonic() < deadline:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=60)
    assert run.returncode == 130, err.decode()
    assert b"stopping after the trace in flight" in err and b"re-run the same command" in err
    with open_store(store) as opened:
        done = opened.query(TraceQuery()).total
        assert 0 < done < 60
        assert opened.verify() == []  # no temp file, no unindexed file
    rerun = subprocess.run(args, env=env, capture_output=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr.decode()
    assert f"recorded {60 - done}, already stored {done}," in rerun.stderr.decode()


def _stored(store: Path) -> bool:
    try:
        with open_store(store) as opened:
            return opened.query(TraceQuery()).total > 0
    except StoreError:  # not created yet, or being created
        return False


def test_identity_decides_the_id(tmp_path: Path, demo_model):
    """Labels (reference, tags) do not change a trace's id; what it measures does."""
    from engine.inputs import load_image
    from engine.recorder import RecordOptions
    from engine.recording import RecordRequest, identity_trace_id, trace_identity
    from store.schema import GenerationSettings

    make_scene(4).image.save(tmp_path / "s.png")
    base = RecordRequest((load_image(tmp_path / "s.png"),), "What shape?", RecordOptions())

    def trace_id(request: RecordRequest) -> str:
        return identity_trace_id(trace_identity(demo_model, request))

    same = [replace(base, reference="red", tags=("t",), extra={"k": 1})]
    other = [
        replace(base, prompt="What colour?"),
        replace(base, lossy="log8"),
        replace(base, options=RecordOptions(relevancy=False)),
        replace(base, options=RecordOptions(GenerationSettings(max_new_tokens=3))),
        replace(base, images=(load_image(make_scene(5).image),)),
    ]
    assert {trace_id(r) for r in same} == {trace_id(base)}
    ids = {trace_id(r) for r in other}
    assert len(ids) == len(other) and trace_id(base) not in ids
    assert len(trace_id(base)) == 32 and set(trace_id(base)) <= set("0123456789abcdef")


def _rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


RSS_TRACES = 200
RSS_WARMUP = 50
RSS_GROWTH_LIMIT = 32 * 2**20


def test_memory_stays_flat_over_many_traces(tmp_path: Path, demo_model):
    """Recording 200 demo traces with relevancy into one store: RSS after the first 50 grows
    by less than 32 MiB over the remaining 150 (measured: about 9 MiB). Keeping each recorded
    Trace alive would already add about 49 MiB (0.34 MB of arrays each), keeping its float32
    tensors or autograd graph more."""
    from engine.demo.world import demo_items
    from engine.inputs import load_image
    from engine.recorder import RecordOptions
    from engine.recording import RecordRequest, record_into_store

    options = RecordOptions()
    started = time.monotonic()
    with open_store(tmp_path / "store", writable=True) as opened:
        for index, (scene, question) in enumerate(demo_items(RSS_TRACES, seed=11)):
            if index == RSS_WARMUP:
                warm = _rss_bytes()
            request = RecordRequest((load_image(scene.image),), question.text, options)
            assert not record_into_store(opened, demo_model, request).skipped
        grown = _rss_bytes() - warm
        assert opened.query(TraceQuery()).total == RSS_TRACES
    per_minute = RSS_TRACES / (time.monotonic() - started) * 60
    print(f"RSS growth after warm-up: {grown / 2**20:.1f} MiB; {per_minute:.0f} traces/minute")
    assert grown < RSS_GROWTH_LIMIT
