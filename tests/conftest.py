"""Shared test harness: the HF fixture, tiny registries, and an in-process CLI runner."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "hf-gpt2-tiny"


# The longest files start first, so the two test workers finish together rather than one
# starting the quickstart when everything else is done.
LONGEST_FIRST = ("test_quickstart.py", "test_concurrency.py", "test_distill.py", "test_quantize.py",
                 "test_serving.py", "test_export.py", "test_ui_browser.py", "test_team_stores.py",
                 "test_prune_plugin.py", "test_crashes.py", "test_doctor_live.py", "test_hub_sources.py",
                 "test_moved_home.py", "test_secrets.py", "test_real_crashes.py")


def pytest_collection_modifyitems(items):
    order = {name: rank for rank, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: order.get(item.path.name, len(order)))  # stable: a file keeps its order


@pytest.fixture(scope="session")
def fixture_dir() -> Path:
    assert (FIXTURE / "reference.json").is_file(), f"the Hugging Face fixture is missing at {FIXTURE}"
    return FIXTURE


@pytest.fixture
def hf_folder(fixture_dir, tmp_path) -> Path:
    """A writable copy of the Hugging Face fixture."""
    folder = tmp_path / "hf"
    shutil.copytree(fixture_dir, folder)
    for file in folder.iterdir():
        file.chmod(0o644)
    return folder


@pytest.fixture(scope="session")
def reference(fixture_dir) -> dict:
    return json.loads((fixture_dir / "reference.json").read_text())


@pytest.fixture(scope="session")
def hf_tokenizer(fixture_dir):
    """Hugging Face's own fast tokenizer, from the fixture's tokenizer.json: as transformers' GPT2TokenizerFast
    reads text (`<|endoftext|>` written in a text is token 50256)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(fixture_dir / "tokenizer.json"))


@pytest.fixture(scope="session")
def hf_tokenizer_as_text(fixture_dir):
    """The same with split_special_tokens: special-token text read as plain characters."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(fixture_dir / "tokenizer.json"))
    tokenizer.encode_special_tokens = True
    return tokenizer


class CliResult:
    def __init__(self, code, out, err):
        self.exit_code, self.stdout, self.stderr = code, out, err

    def json(self):
        return json.loads(self.stdout)

    def __repr__(self):
        return f"CliResult(exit_code={self.exit_code}, stdout={self.stdout[-500:]!r}, stderr={self.stderr[-800:]!r})"


@pytest.fixture
def gpt2reg(capsys):
    """Run `gpt2reg ARGS...` in this process (no TensorFlow start-up per call)."""
    from registry.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as done:
            code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(scope="session")
def imported_home(tmp_path_factory, fixture_dir) -> Path:
    """A registry holding the Hugging Face fixture as `fx/1`."""
    from registry import Registry

    home = tmp_path_factory.mktemp("imported")
    Registry(home).import_("fx", str(fixture_dir))
    return home


@pytest.fixture(scope="session")
def family_home(tmp_path_factory) -> Path:
    """A registry with a tiny `base/1` and its short fine-tune `base-finetune/1`."""
    from registry import Registry

    home = tmp_path_factory.mktemp("family")
    text = tmp_path_factory.mktemp("data") / "train.txt"
    text.write_text(_corpus_sample(), encoding="utf-8")
    reg = Registry(home)
    base = reg.create("base", config="tiny", seed=0)
    reg.run("finetune", base, data=[str(text)], steps=6, batch_size=4, seq_len=32, lr=3e-3)
    return home


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "sample.txt"
    path.write_text(_corpus_sample(), encoding="utf-8")
    return path


def _corpus_sample() -> str:
    from registry.corpus import documents

    texts, _ = documents()
    return "\n\n".join(texts[:12])


def store_snapshot(home: Path) -> dict:
    """What a user could see change in a store: variants, MLflow versions and runs, files."""
    from registry import Registry

    snapshot = {"files": sorted(
        str(p.relative_to(home)) for p in home.rglob("*")
        if p.is_file() and not p.name.endswith(("-wal", "-shm", ".db"))
    )}
    if (home / "lineage.db").exists():
        reg = Registry(home)
        snapshot["variants"] = [v.ref for v in reg.list()]
        snapshot["versions"] = sorted(f"{v.name}/{v.version}" for v in reg.tracker.versions())
        snapshot["runs"] = sorted(r.info.run_id for r in reg.tracker.search_runs())
        reg.close()
    return snapshot


# ---------------------------------------------------------------- team stores: PostgreSQL and an MLflow server


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until(ready, what: str, process: subprocess.Popen | None = None, timeout: float = 180.0) -> None:
    """Poll `ready()` until it is true; fail at once if `process` exits first."""
    deadline = time.monotonic() + timeout
    pause = 0.05
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what} exited with status {process.returncode} before it was ready")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} was not ready after {timeout:.0f} s")
        time.sleep(pause)
        pause = min(pause * 2, 0.5)


class PostgresServer:
    """A throwaway PostgreSQL server on 127.0.0.1, in a temporary data folder.

    initdb and postgres refuse to run as root; as root (in CI, in containers) they run
    as Debian's `postgres` system user, which then owns the folder.
    """

    def __init__(self):
        self.bin = self._binaries()
        self.port = free_port()
        # Not pytest's tmp_path: its parents are private to the current user, and the
        # `postgres` user must reach the data folder.
        self.root = Path(tempfile.mkdtemp(prefix="gpt2reg-postgres-"))
        self.data, self.sockets, self.log = self.root / "data", self.root / "sockets", self.root / "server.log"
        self.sockets.mkdir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sockets, "postgres")
        self._template: str | None = None

    @staticmethod
    def _binaries() -> Path:
        candidates = []
        if shutil.which("pg_config"):
            found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
            candidates.append(Path(found.stdout.strip()))
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(versions, key=lambda p: [int(n) for n in p.parent.name.split(".") if n.isdigit()],
                             reverse=True)  # the newest first
        for folder in candidates:
            if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
                return folder
        pytest.fail("PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed; the team-store "
                    "tests need them: apt-get install postgresql (Debian's package)")

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            pytest.fail(f"{' '.join(command[:2])} failed ({done.returncode}): {done.stderr[-2000:]}\n{log}")

    def start(self) -> "PostgresServer":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--encoding=UTF8", "--no-sync", "--no-instructions")
        # Test data: nothing needs to survive a crash, so no waiting for the disk.
        settings = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 "
                    "-c shared_buffers=32MB")
        # -w: pg_ctl itself polls until the server accepts connections.
        self._run(str(self.bin / "pg_ctl"), "start", "-w", "-t", "120", "-D", str(self.data), "-l", str(self.log),
                  "-o", settings)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run(str(self.bin / "pg_ctl"), "stop", "-D", str(self.data), "-m", "immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str, database: str = "postgres") -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database)
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with connection.cursor() as cursor:
                cursor.execute(statement)
        finally:
            connection.close()

    def create_database(self, template: str | None = None) -> str:
        """A new, empty database (or a copy of `template`); returns its URL."""
        name = f"test_{uuid.uuid4().hex[:12]}"
        self.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def create_mlflow_database(self) -> str:
        """A new database that already holds MLflow's tables.

        MLflow's migrations take seconds on PostgreSQL; they run once, into a template
        database, and each test gets a copy of it (CREATE DATABASE ... TEMPLATE).
        """
        if self._template is None:
            from mlflow import MlflowClient

            from registry.home import with_installed_driver

            url = self.create_database()
            client = MlflowClient(tracking_uri=with_installed_driver(url))
            client.search_experiments()  # each store runs the migrations when it first connects
            client._get_registry_client().store.engine.dispose()
            client._tracking_client.store.engine.dispose()
            name = url.rsplit("/", 1)[1]
            # A template must have no open connections (MLflow's engines pool theirs).
            self.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
                         "AND pid <> pg_backend_pid()")
            self._template = name
        return self.create_database(template=self._template)


class MlflowServer:
    """`mlflow server` with --serve-artifacts, on a PostgreSQL database, as a team would run it."""

    def __init__(self, postgres: PostgresServer, root: Path):
        from registry.home import with_installed_driver

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = postgres.create_mlflow_database()
        self.artifacts = root / "served-artifacts"
        self.log = root / "mlflow-server.log"
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no GenAI job runners
        command = [sys.executable, "-m", "mlflow", "server",
                   "--backend-store-uri", with_installed_driver(self.database_url),
                   "--serve-artifacts", "--artifacts-destination", str(self.artifacts),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=environment,
                                            start_new_session=True)
        try:
            _wait_until(self._answers, f"the MLflow server (log: {self.log})", self.process)
        except BaseException:
            self.stop()
            print(self.log.read_text(errors="replace")[-3000:], file=sys.stderr)
            raise

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)  # the server and its uvicorn worker
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for this test session, started on first use."""
    server = PostgresServer()
    try:
        server.start()
    except BaseException:
        server.stop()  # its temporary folder
        raise
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, tmp_path_factory):
    """An MLflow tracking server (--serve-artifacts, PostgreSQL backend) for this session, started on first use."""
    server = MlflowServer(postgres_server, tmp_path_factory.mktemp("mlflow-server"))
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch, tmp_path):
    # Tests never touch a user's ./mlruns or plugin settings.
    monkeypatch.delenv("GPT2REG_HOME", raising=False)
    monkeypatch.delenv("GPT2REG_LOAD_PLUGINS", raising=False)
    monkeypatch.delenv("GPT2REG_SPECIAL_TOKENS", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.chdir(tmp_path)
