"""A fresh virtual environment installs the project and gets the console command."""

import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fresh_environment_install(tmp_path):
    # This interpreter's packages stand in for the dependencies (no network in tests); the
    # project itself is built and installed from pyproject.toml.
    # No pip inside it (ensurepip costs seconds): this pip installs into it (--python).
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dependencies = [*site.getsitepackages(), sysconfig.get_paths()["purelib"]]
    Path(purelib, "dependencies.pth").write_text("\n".join(dependencies) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(python)]
    install = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    command = env_dir / "bin" / "lvlm-interpret"
    result = subprocess.run([command, "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    for sub_command in ("record", "serve", "ls", "store", "demo"):
        assert sub_command in result.stdout
    shipped = subprocess.run(
        [
            python,
            "-c",
            "import engine.cli.demo as d; print([p.name for p in d.CHECKPOINT.iterdir()])",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert "model.safetensors" in shipped.stdout, shipped.stderr
