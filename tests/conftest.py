"""Shared fixtures: the shipped demo checkpoint and a tiny random-initialised LLaVA."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # torch threads collapse on 2 busy cores

from pathlib import Path

import pytest

DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "engine" / "demo" / "checkpoint"


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests run beside each other on 2 cores: one intra-op thread each (as CI measures)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_checkpoint() -> Path:
    return DEMO_CHECKPOINT


@pytest.fixture(scope="session")
def demo_model(demo_checkpoint):
    from engine.loading import load_model

    return load_model(str(demo_checkpoint))


@pytest.fixture(scope="session")
def random_llava_dir(tmp_path_factory) -> Path:
    """A real LlavaForConditionalGeneration with random weights, saved like a hub checkpoint."""
    import torch

    from engine.demo.architecture import build_model, build_processor, build_tokenizer

    torch.manual_seed(0)
    tokenizer = build_tokenizer()
    path = tmp_path_factory.mktemp("random-llava")
    build_model(tokenizer).save_pretrained(path)
    build_processor(tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def paired_demo_store(tmp_path_factory) -> Path:
    """The same five demo questions (one per kind) recorded on both bundled checkpoints by
    the real command, without causal explanations: what `make demo` records, smaller."""
    from typer.testing import CliRunner

    from engine.cli import app

    store = tmp_path_factory.mktemp("paired") / "store"
    args = ["demo", "record", "--store", str(store), "--checkpoint", "both", "--count", "5"]
    result = CliRunner().invoke(app, [*args, "--no-causal"])
    assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="session")
def occlusion_demo_store(tmp_path_factory) -> tuple[Path, list[str]]:
    """Three demo questions (colour, shape, position: each about one object) recorded by
    ``demo record --metrics occlusion`` without causal explanations, and their trace ids in
    question order: traces with ground truth and a stored occlusion map."""
    from typer.testing import CliRunner

    from engine.cli import app
    from store import open_store

    store = tmp_path_factory.mktemp("occlusion") / "store"
    args = ["demo", "record", "--store", str(store), "--count", "3", "--no-causal"]
    result = CliRunner().invoke(app, [*args, "--metrics", "occlusion"])
    assert result.exit_code == 0, result.output
    with open_store(store) as opened:
        items = sorted(opened.query().items, key=lambda i: i.created_at)
        assert [i.extra["question_kind"] for i in items] == ["colour", "shape", "position"]
    return store, [i.trace_id for i in items]


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL 15 server (scripts/postgres.sh) on a free loopback port for this
    session; its URL (database "lvi"). Skips only where the server binaries are absent."""
    import shutil
    import socket
    import subprocess
    import tempfile

    if not (PG_BIN / "pg_ctl").exists():
        pytest.skip(f"no PostgreSQL 15 binaries in {PG_BIN} (apt-get install postgresql)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "postgres.sh"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    folder = tempfile.mkdtemp(prefix="lvi-pg-")
    run = [str(script), "start", folder, port]
    url = subprocess.run(run, check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield url
    finally:
        subprocess.run([str(script), "stop", folder, port], check=False, capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def fresh_postgres_url(postgres_url):
    """The URL of a new, empty database on the session's server (dropped afterwards)."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    yield postgres_url.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request):
    """A test taking this runs twice: on a store's own SQLite index (None) and on a fresh
    database of the session's PostgreSQL server."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("fresh_postgres_url")
