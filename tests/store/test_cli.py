import pytest
from typer.testing import CliRunner

from store import StoreOpenError, open_store
from store.cli import app

runner = CliRunner()


def test_cli_commands(store_dir, make_trace, tmp_path):
    with open_store(store_dir, writable=True) as st:
        a = st.add(make_trace(seed=1))
        b = st.add(make_trace(seed=2))
    opts = ["--store", str(store_dir)]

    out = runner.invoke(app, ["ls", *opts])
    assert out.exit_code == 0 and "2 trace(s)" in out.output and a in out.output

    assert runner.invoke(app, ["tag", a, "good", "x", *opts]).exit_code == 0
    assert runner.invoke(app, ["tag", a, "x", "--remove", *opts]).exit_code == 0
    out = runner.invoke(app, ["ls", "--tag", "good", *opts])
    assert a in out.output and b not in out.output

    out = runner.invoke(app, ["show", a, *opts])
    assert out.exit_code == 0 and "lm_attention" in out.output and "good" in out.output
    assert runner.invoke(app, ["show", "../etc", *opts]).exit_code == 2

    out = runner.invoke(app, ["export", a, str(tmp_path / "out"), *opts])
    assert out.exit_code == 0 and (tmp_path / "out" / f"{a}.h5").exists()

    assert runner.invoke(app, ["verify", *opts]).exit_code == 0
    (store_dir / "tmp" / f"{'0' * 32}.1.0badc0de.tmp.h5").write_bytes(b"x")
    out = runner.invoke(app, ["verify", *opts])
    assert out.exit_code == 1 and "temp_leftover" in out.output
    out = runner.invoke(app, ["gc", *opts])
    assert "removed 1 temp file(s)" in out.output

    assert runner.invoke(app, ["rm", b, "--yes", *opts]).exit_code == 0
    out = runner.invoke(app, ["reindex", *opts])
    assert out.exit_code == 0 and "indexed 1 trace(s)" in out.output
    assert runner.invoke(app, ["ls", "--store", str(tmp_path / "none")]).exit_code == 2


def test_a_folder_that_is_no_store_never_becomes_one(tmp_path, monkeypatch, make_trace):
    """`--store ""` is the working directory: a maintenance command must not leave a store's
    files in a project folder, and no API opening may either."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("mine")
    monkeypatch.chdir(project)
    for args in (["tag", "0" * 32, "x"], ["migrate"], ["gc"], ["ls"]):
        out = runner.invoke(app, [*args, "--store", ""])
        assert out.exit_code == 2, (args, out.output)
        assert sorted(p.name for p in project.iterdir()) == ["notes.txt"], args
    with pytest.raises(StoreOpenError, match="not a store"):
        open_store(project, writable=True)
    assert sorted(p.name for p in project.iterdir()) == ["notes.txt"]
    with open_store(tmp_path / "empty", writable=True) as fresh:  # new folders still work
        fresh.add(make_trace())


def test_export_table_refuses_bad_tags_and_names_in_one_line(store_dir, make_trace, tmp_path):
    with open_store(store_dir, writable=True) as st:
        st.add(make_trace())
    opts = ["--store", str(store_dir)]
    for extra in (["--tag", ""], ["--tag", "a\x07b"]):
        out = runner.invoke(app, ["export-table", "--out", str(tmp_path / "t.csv"), *extra, *opts])
        assert out.exit_code == 2 and "invalid tag" in out.output, out.output
    long_name = tmp_path / ("x" * 300 + ".csv")
    out = runner.invoke(app, ["export-table", "--out", str(long_name), *opts])
    assert out.exit_code == 2 and "too long" in out.output, out.output
    for empty in ("", "  ", "."):
        out = runner.invoke(app, ["export-table", "--out", empty, *opts])
        assert out.exit_code == 2 and "names no file" in out.output, out.output
    assert not (tmp_path / "t.csv").exists()
