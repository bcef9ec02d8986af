from typer.testing import CliRunner

from store import open_store
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
