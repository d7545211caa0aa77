"""Secrets never leak: a URL's password and the tokens in the environment stay out of everything.

A team's stores are reached with credentials: the lineage and tracking
databases' URLs carry a password, the MLflow server's URL a user and password,
and the environment holds HF_TOKEN, MLFLOW_TRACKING_PASSWORD and
MLFLOW_TRACKING_TOKEN. Each planted secret holds `MARK`; after a user's
commands (fresh `gpt2reg` processes) everything they leave is searched for it:
what each printed, every file of the home, the served artifacts, MLflow's
params and tags of every run and model version, and the databases' rows. Where
a command shows a store's URL, the masked form (`***`) must be there instead,
so that printing nothing would not pass.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.conftest import _wait_until, free_port

MARK = "XYZ-planted"
PASSWORD = f"s3cr3t-{MARK}"  # in the URLs
SECRET_ENVIRONMENT = {
    "HF_TOKEN": f"hf-token-{MARK}",
    "MLFLOW_TRACKING_USERNAME": "alice",
    "MLFLOW_TRACKING_PASSWORD": f"mlflow-password-{MARK}",
    "MLFLOW_TRACKING_TOKEN": f"mlflow-token-{MARK}",
}


def _with_password(url: str, user: str = "postgres", password: str = PASSWORD) -> str:
    """`postgresql://postgres@host/db` as `postgresql://USER:PASSWORD@host/db`."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[1]}"


def _database_text(postgres_server, url: str) -> str:
    """Every row of every table of the database at `url`, as text."""
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user="postgres",
                                  dbname=url.rsplit("/", 1)[1])
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = [row[0] for row in cursor.fetchall()]
            rows = []
            for table in tables:
                cursor.execute(f'SELECT t::text FROM "{table}" t')
                rows.extend(row[0] for row in cursor.fetchall())
        return "\n".join(rows)
    finally:
        connection.close()


def _files_holding_the_secret(*folders: Path) -> list[str]:
    return [str(path) for folder in folders for path in folder.rglob("*")
            if path.is_file() and MARK.encode() in path.read_bytes()]


def _mlflow_text(tracking_uri: str) -> str:
    """What MLflow holds about every run and model version: names, params, tags, descriptions, sources."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    pieces = []
    for run in client.search_runs(experiments, max_results=5000):
        pieces += [run.info.run_name or "", run.info.artifact_uri or "", repr(run.data.params), repr(run.data.tags)]
    for version in client.search_model_versions(max_results=5000):
        pieces += [version.source or "", version.description or "", repr(version.tags)]
    for model in client.search_registered_models(max_results=1000):
        pieces += [model.description or "", repr(model.tags)]
    assert pieces, "MLflow holds nothing: the search would prove nothing"
    return "\n".join(pieces)


@pytest.fixture
def run_with_secrets(run_cli):
    """`gpt2reg ARGS` in a fresh process with the secret environment; every run kept for the search."""
    runs = []

    def run(*args, expect: int = 0):
        done = run_cli(*args, env=SECRET_ENVIRONMENT)
        runs.append((args, done))
        assert done.code == expect, (args, done)
        return done

    run.outputs = lambda: [(args, done.stdout + done.stderr) for args, done in runs]
    return run


def _assert_no_output_holds_the_secret(run_with_secrets) -> None:
    leaked = [(args[0], text) for args, text in run_with_secrets.outputs() if MARK in text]
    assert not leaked, leaked


@pytest.fixture
def mlflow_server(postgres_server, tmp_path_factory):
    """A tracking server of this test's own: on the session's shared one, other tests' homes have
    registered variants that this home's lineage store does not hold, which its doctor would report."""
    from tests.conftest import MlflowServer

    server = MlflowServer(postgres_server, tmp_path_factory.mktemp("secrets-server"))
    try:
        yield server
    finally:
        server.stop()


def test_a_team_member_s_credentials_appear_nowhere(run_with_secrets, mlflow_server, postgres_server,
                                                    fixture_dir, tmp_path):
    host = mlflow_server.url.split("://", 1)[1]
    tracking_uri = f"http://alice:{PASSWORD}@{host}"
    lineage_database = postgres_server.create_database()
    lineage_url = _with_password(lineage_database)
    home = tmp_path / "home"
    stores = ["--home", home, "--tracking-uri", tracking_uri, "--lineage-url", lineage_url]

    ready = run_with_secrets("init", *stores)
    assert f"registry ready at {home}" in ready.stdout
    shown = json.loads(run_with_secrets("init", *stores, "--json").stdout)
    assert shown["tracking_uri"] == f"http://alice:***@{host}"
    assert shown["lineage_url"].endswith(f"postgres:***@{lineage_database.split('@', 1)[1]}")

    imported = json.loads(run_with_secrets("import", "fx", fixture_dir, *stores, "--json").stdout)
    assert imported["ref"] == "fx/1"
    assert "fx/1" in run_with_secrets("list", *stores).stdout
    assert [v["ref"] for v in json.loads(run_with_secrets("list", *stores, "--json").stdout)["variants"]] == ["fx/1"]
    assert "fx/1" in run_with_secrets("show", "fx", *stores).stdout
    shown_variant = json.loads(run_with_secrets("show", "fx", *stores, "--json").stdout)
    assert shown_variant["content_hash"] == imported["content_hash"]
    doctor = json.loads(run_with_secrets("doctor", *stores, "--json").stdout)
    assert doctor["problems"] == [] and doctor["variants_checked"] == 1

    # A source URL with credentials is refused, masked: it is not a folder, a preset or a handle.
    source = f"https://alice:{PASSWORD}@models.example/gpt2"
    refused = run_with_secrets("import", "remote", source, *stores, expect=2)
    assert "https://alice:***@models.example/gpt2" in refused.stderr
    # A token pasted where a source goes is echoed masked too.
    pasted = run_with_secrets("import", "pasted", f"./{SECRET_ENVIRONMENT['HF_TOKEN']}", *stores, expect=2)
    assert "./*** does not exist" in pasted.stderr

    _assert_no_output_holds_the_secret(run_with_secrets)
    assert not _files_holding_the_secret(tmp_path, mlflow_server.artifacts)
    recorded = _mlflow_text(mlflow_server.url)
    assert imported["run_id"] in recorded and str(fixture_dir) in recorded  # the source, as a param
    assert MARK not in recorded
    lineage_rows = _database_text(postgres_server, lineage_database)
    assert imported["content_hash"] in lineage_rows and MARK not in lineage_rows
    assert MARK not in _database_text(postgres_server, mlflow_server.database_url)


@pytest.fixture
def password_user(postgres_server):
    """A PostgreSQL user that must give its password (the test server trusts every other user)."""
    user = f"member_{uuid.uuid4().hex[:8]}"
    postgres_server.execute(f"CREATE ROLE {user} LOGIN PASSWORD 'the-right-one'")
    hba = postgres_server.data / "pg_hba.conf"
    trusting = hba.read_text()
    hba.write_text(f"host all {user} 127.0.0.1/32 scram-sha-256\n" + trusting)
    reload = [str(postgres_server.bin / "pg_ctl"), "reload", "-D", str(postgres_server.data)]
    postgres_server._run(*reload)
    _wait_until(lambda: _refused(postgres_server, user), "PostgreSQL's reload of pg_hba.conf", timeout=30)
    yield user
    hba.write_text(trusting)
    postgres_server._run(*reload)


def _refused(postgres_server, user: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host="127.0.0.1", port=postgres_server.port, user=user, password="wrong",
                         dbname="postgres").close()
    except psycopg2.OperationalError as error:
        return "password authentication failed" in str(error)
    return False


def test_credentials_in_database_urls_and_refused_connections_are_masked(run_with_secrets, postgres_server,
                                                                         password_user, tmp_path):
    tracking_database = postgres_server.create_mlflow_database()
    lineage_database = postgres_server.create_database()
    home = tmp_path / "home"
    stores = ["--home", home, "--tracking-uri", _with_password(tracking_database),
              "--lineage-url", _with_password(lineage_database)]

    shown = json.loads(run_with_secrets("init", *stores, "--json").stdout)
    assert shown["tracking_uri"].endswith(f"postgres:***@{tracking_database.split('@', 1)[1]}")
    assert shown["lineage_url"].endswith(f"postgres:***@{lineage_database.split('@', 1)[1]}")
    assert json.loads(run_with_secrets("doctor", *stores, "--json").stdout)["problems"] == []
    created = json.loads(run_with_secrets("create", "tiny", "--config", "tiny", *stores, "--json").stdout)

    wrong_password = _with_password(lineage_database, user=password_user)
    unknown_host = f"postgresql://postgres:{PASSWORD}@no-such-host.invalid/registry"
    missing_database = _with_password(postgres_server.url("no_such_database"))
    for url, problem in [(wrong_password, "password authentication failed"),
                         (unknown_host, "could not translate host name"),
                         (missing_database, 'database "no_such_database" does not exist')]:
        failed = run_with_secrets("list", "--home", home, "--lineage-url", url, expect=2)
        assert problem in failed.stderr and ":***@" in failed.stderr, failed
    nobody = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    unreachable = run_with_secrets("init", "--home", tmp_path / "other", "--tracking-uri", nobody, expect=2)
    assert "cannot reach the MLflow tracking server at http://alice:***@127.0.0.1:" in unreachable.stderr
    no_tracking_database = _with_password(postgres_server.url("no_mlflow_database"))
    dead_tracking = run_with_secrets("init", "--home", tmp_path / "other", "--tracking-uri", no_tracking_database,
                                     expect=2)
    assert "postgres:***@" in dead_tracking.stderr

    _assert_no_output_holds_the_secret(run_with_secrets)
    assert not _files_holding_the_secret(tmp_path)
    from registry.home import with_installed_driver

    recorded = _mlflow_text(with_installed_driver(tracking_database))
    assert created["run_id"] in recorded and MARK not in recorded
    lineage_rows = _database_text(postgres_server, lineage_database)
    assert created["content_hash"] in lineage_rows and MARK not in lineage_rows
    tracking_rows = _database_text(postgres_server, tracking_database)
    assert created["run_id"] in tracking_rows and MARK not in tracking_rows


def test_the_sdk_s_errors_and_home_mask_the_password_too(tmp_path):
    from registry import Registry
    from registry.errors import UsageError

    nobody = f"http://alice:{PASSWORD}@127.0.0.1:{free_port()}"
    reg = Registry(tmp_path / "home", tracking_uri=nobody, lineage_url=f"postgresql://team:{PASSWORD}@127.0.0.1:1/x")
    assert MARK not in repr(reg.home) and repr(reg.home).count(":***@") == 2
    with pytest.raises(UsageError) as unreachable:
        reg.tracker  # noqa: B018
    assert MARK not in str(unreachable.value) and f"{nobody.replace(PASSWORD, '***')}" in str(unreachable.value)
    with pytest.raises(UsageError) as refused:
        reg.lineage_store  # noqa: B018
    assert MARK not in str(refused.value) and "team:***@127.0.0.1:1" in str(refused.value)
