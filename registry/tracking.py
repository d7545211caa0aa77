"""The MLflow side of the store: runs, metrics, artifacts, registered versions, aliases.

Only the core uses this module (capabilities never do). MLflow is imported on
first use so that commands which do not touch it start fast.
"""

from __future__ import annotations

import json
import logging
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from registry.errors import NotFoundError, RegistryError, UsageError, masked
from registry.home import Home, connection_problem, shown_url

EXPERIMENT = "gpt2reg"
TAG_PREFIX = "gpt2reg."
# MLflow 3's UI opens an experiment of this kind in its model-training view (runs, metrics, models),
# not its GenAI view (traces, judges).
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
MODEL_TYPE = "gpt2"  # a logged model's type, as MLflow's model list shows it
REGISTERED_MODEL_DESCRIPTION = "GPT-2 variants registered by gpt2-registry"
_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
_PARAMS_PER_BATCH = 100


def _quiet_mlflow() -> None:
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # With a tracking server MLflow prints "View run at ..." on stdout, where --json prints its document.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    # The signature is given explicitly; an input example would run the model at save time.
    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
    # MLflow's first connection to a new database runs Alembic migrations that log at INFO.
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class TrackingServerUnreachable(UsageError):
    """The MLflow tracking server did not answer (not running, wrong address)."""


class Tracker:
    def __init__(self, home: Home):
        import mlflow
        from mlflow import MlflowClient

        _quiet_mlflow()  # after the import: importing mlflow sets its loggers to INFO

        self.home = home
        self._mlflow = mlflow
        self._experiment_id: str | None = None
        if home.tracking_server:
            # MLflow's client retries a refused connection for minutes before it gives up.
            check_server_answers(home.tracking_uri)
            self.client = MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
            return
        # MLflow creates or migrates its tables when a store first connects (the client's
        # constructor connects): one process at a time, or all but the first fail on
        # "duplicate column" (a SQLite home: under its lock file; a database server: under
        # a lock of the server's own, since team members' homes share nothing else).
        with home.lock() if home.is_local else _database_lock(home.tracking_uri):
            self.client = MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
            self.client._get_registry_client().store  # noqa: B018
        if home.is_local:
            _use_write_ahead_log(home.path / "mlflow.db")

    # ------------------------------------------------------------ runs

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
                if experiment.tags.get(EXPERIMENT_KIND_TAG) is None:  # a home made before the tag
                    self.client.set_experiment_tag(self._experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
            else:
                from mlflow.exceptions import MlflowException

                # A tracking server keeps the artifacts itself (--serve-artifacts); MLflow opening a
                # database directly would put them under the working directory.
                location = None if self.home.tracking_server else self.home.artifact_root.as_uri()
                try:
                    self._experiment_id = self.client.create_experiment(
                        EXPERIMENT, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
                except MlflowException:  # another process created it first
                    self._experiment_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        return self._experiment_id

    def start_run(self, run_name: str, tags: dict[str, str]):
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=_masked_tags(tags))

    def log_params(self, run_id: str, params: dict[str, Any]) -> dict[str, str]:
        """The params as MLflow keeps them (flattened, masked, cut to its length limit); returns what it logged."""
        from mlflow.entities import Param

        values = param_values(params)
        flat = [Param(key, value) for key, value in values.items()]
        for start in range(0, len(flat), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=flat[start : start + _PARAMS_PER_BATCH])
        return values

    def set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(key, value) for key, value in _masked_tags(tags).items()])

    def log_metrics(self, run_id: str, metrics: dict[str, float], history: dict[str, list[tuple[int, float]]] | None = None,
                    *, model_id: str | None = None, datasets: dict[str, Any] | None = None,
                    streamed: dict[str, set[int]] | None = None) -> None:
        """Final values and curves, in batches (one call per 1000 points, not one per point).

        With `model_id` the final values are the logged model's figures too (MLflow lists and ranks
        models by them); `datasets` maps a metric to the `registry.datasets.DataSetUse` it was measured on.
        `streamed`: the steps of each curve the run logged while it worked (`registry.recorder.RunInProgress`),
        not logged again; a curve's last point still is when it is the model's figure.
        """
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        history = history or {}
        datasets = datasets or {}

        def final(key: str, value: float, step: int = 0):
            data = datasets.get(key)
            return Metric(key, float(value), now, step, model_id=model_id, dataset_name=data.name if data else None,
                          dataset_digest=data.digest if data else None)

        # A metric with a curve is its curve: its last point is the final value, and the model's.
        points = [
            final(key, value)
            for key, value in metrics.items()
            if key not in history and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        streamed = streamed or {}
        for key, series in history.items():
            curve = [(int(step), float(value)) for step, value in series if math.isfinite(value)]
            logged = streamed.get(key, set())
            points.extend(Metric(key, value, now, step) for step, value in curve[:-1] if step not in logged)
            if curve and (curve[-1][0] not in logged or model_id is not None):
                points.append(final(key, curve[-1][1], curve[-1][0]))
        for start in range(0, len(points), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=points[start : start + _METRICS_PER_BATCH])

    def log_inputs(self, run_id: str, uses: list) -> None:
        """The data sets a run used (`registry.datasets.DataSetUse`), as its MLflow data set inputs."""
        from registry.datasets import mlflow_inputs

        if uses:
            self.client.log_inputs(run_id, datasets=mlflow_inputs(uses))

    # ------------------------------------------------------------ logged models

    def create_logged_model(self, name: str, run_id: str, *, params: dict[str, Any], tags: dict[str, str]):
        """An MLflow 3 logged model of the run, PENDING until `finish_logged_model`.

        Named after the variant, less the characters MLflow refuses in a logged model's name (a variant
        may be called `student-0.5`); the variant's own name is its `gpt2reg.name` tag.
        """
        import re

        flat = {key: masked(str(value))[:6000] for key, value in _flatten(params).items()}
        return self.client.create_logged_model(self.experiment_id, name=re.sub(r"[/:.%\"']", "_", name),
                                               source_run_id=run_id, params=flat,
                                               tags=_masked_tags({**tags, f"{TAG_PREFIX}name": name}),
                                               model_type=MODEL_TYPE)

    def log_model_files(self, model, local_dir: Path, run_id: str, artifact_path: str) -> None:
        """The logged model's artifacts: `local_dir`, which the run logged under `artifact_path` already.

        In a home's own artifact store they are hard links to the run's files (no second copy of the
        weights on the disk); a tracking server gets them uploaded (and only there: see `Recorder`).
        """
        import os
        import shutil

        source = local_path(self.get_run(run_id).info.artifact_uri)
        target = local_path(model.artifact_location)
        if self.home.tracking_server or source is None or target is None:
            self.client.log_model_artifacts(model.model_id, str(local_dir))
            return
        source = source / artifact_path
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            destination = target / file.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(file, destination)
            except OSError:  # another file system, or links not allowed: a copy
                shutil.copy2(file, destination)

    def log_model_card(self, model_id: str, run_id: str, folder: Path) -> None:
        """A model card (`folder`/README.md) into the logged model's files and the run's `model_card/`."""
        self.client.log_model_artifacts(model_id, str(folder))
        self.client.log_artifacts(run_id, str(folder), "model_card")

    def finish_logged_model(self, model_id: str, status: str = "READY") -> None:
        from mlflow.entities import LoggedModelStatus

        self.client.finalize_logged_model(model_id, LoggedModelStatus(status))

    def logged_models_of(self, run_id: str) -> list:
        return list(self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                     filter_string=f"source_run_id = '{run_id}'"))

    def delete_logged_models_of(self, run_id: str) -> None:
        """Delete the run's logged models and their files (a half-made variant's model must not outlive it)."""
        import shutil

        from mlflow.exceptions import MlflowException

        try:
            models = self.logged_models_of(run_id)
        except MlflowException:
            return
        for model in models:
            folder = self.run_artifact_folder(model.artifact_location)
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
            try:
                self.client.delete_logged_model(model.model_id)
            except MlflowException:
                pass

    def log_artifacts(self, run_id: str, local_dir: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def log_table(self, run_id: str, rows: list[dict], artifact_file: str) -> None:
        """Rows of one schema as an MLflow table (shown in the run's Evaluation/Artifacts views)."""
        columns: dict[str, list] = {key: [] for row in rows for key in row}
        for row in rows:
            for key in columns:
                value = row.get(key)
                # Lists (choices, scores) as JSON text: MLflow tables hold scalars per cell.
                columns[key].append(json.dumps(value) if isinstance(value, (list, dict)) else value)
        self.client.log_table(run_id, data=columns, artifact_file=artifact_file)

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def set_run_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, masked(str(value)))

    def delete_run(self, run_id: str) -> None:
        """Mark the run deleted in MLflow and remove its artifact files.

        MLflow's own delete keeps the files until `mlflow gc`; a half-made variant's
        files must not outlive it (they may be a partial copy). Files in this home are
        removed directly; files a tracking server holds are deleted through it.
        """
        from mlflow.exceptions import MlflowException

        self.delete_run_files(run_id)
        try:
            self.client.delete_run(run_id)
        except MlflowException:
            pass

    def delete_run_files(self, run_id: str) -> None:
        """Remove the run's artifact files and logged models, and keep the run with its params and metrics
        (a failed or killed run's record: whatever files it had made are part of no variant)."""
        import shutil

        from mlflow.exceptions import MlflowException

        artifact_uri = None
        try:
            artifact_uri = self.client.get_run(run_id).info.artifact_uri
        except MlflowException:
            pass
        self.delete_logged_models_of(run_id)
        folder = self.run_artifact_folder(artifact_uri)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        elif artifact_uri and self.home.tracking_server:
            self._delete_served_artifacts(artifact_uri)

    def _delete_served_artifacts(self, artifact_uri: str) -> None:
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        try:
            get_artifact_repository(artifact_uri, tracking_uri=self.home.tracking_uri).delete_artifacts()
        except Exception as error:  # a server that cannot delete: the run is still marked deleted
            logging.getLogger(__name__).warning("warning: the files of %s stay on the tracking server (%s); "
                                                "`mlflow gc` there removes them", artifact_uri, masked(str(error)))

    def run_artifact_folder(self, artifact_uri: str | None) -> Path | None:
        """The local folder of a run's artifacts (`<root>/<experiment>/<run>`), only inside this home."""
        path = local_path(artifact_uri or "")
        if path is None:
            return None
        folder = path.parent if path.name == "artifacts" else path
        root = self.home.artifact_root.resolve()
        resolved = folder.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            return None  # never remove anything outside the home's artifact store
        return resolved

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def search_runs(self):
        return self.client.search_runs([self.experiment_id], max_results=50000)

    # ------------------------------------------------------------ registry

    def register(self, name: str, source: str, run_id: str, tags: dict[str, str], description: str,
                 model_tags: dict[str, str] | None = None, model_id: str | None = None):
        """A new version of `name`; `model_tags` go on the registered model when this call creates it."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, tags=_masked_tags(model_tags or {}),
                                                description=REGISTERED_MODEL_DESCRIPTION)
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        from mlflow.tracking._tracking_service.utils import _use_tracking_uri

        # A `models:/<model id>` source is looked up by MLflow's registry store through the process's
        # tracking URI, not this client's: pointed at this store for the call.
        with _use_tracking_uri(self.home.tracking_uri):
            version = self.client.create_model_version(
                name=name, source=source, run_id=run_id, tags=_masked_tags(tags), description=masked(description),
                model_id=model_id,
            )
        if model_id is not None:
            # As `mlflow.register_model` does: the logged model's page then names its registered version.
            self.client.set_logged_model_tags(
                model_id, {"mlflow.modelVersions": json.dumps([{"name": name, "version": str(version.version)}])})
        return version

    def describe_version(self, name: str, version: int, description: str) -> None:
        self.client.update_model_version(name, str(version), description=masked(description))

    def delete_version(self, name: str, version: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version(name, str(version))
            if not self.client.search_model_versions(f"name='{name}'"):
                self.client.delete_registered_model(name)
        except MlflowException:
            pass

    def registered_models(self) -> list:
        models, token = [], None
        while True:  # MLflow returns at most 1000 registered models a page
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            models.extend(page)
            token = page.token
            if not token:
                return models

    def delete_registered_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_registered_model(name)
        except MlflowException:
            pass

    def versions(self) -> list:
        return list(self.client.search_model_versions(max_results=200000))

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def resolve_alias(self, name: str, alias: str) -> int:
        from mlflow.exceptions import MlflowException

        try:
            return int(self.client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            raise NotFoundError(f"{name}@{alias} does not exist; list aliases with `gpt2reg show {name}`") from None

    def aliases(self, name: str) -> dict[str, int]:
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return {}
        return {alias: int(version) for alias, version in (model.aliases or {}).items()}

    def model_files_uri(self, name: str, version: int) -> str:
        """Where the registry keeps the files of NAME/VERSION's MLflow model (its logged model's, or for a
        version registered from its run, the run's `model/`)."""
        return self.client.get_model_version_download_uri(name, str(version))

    def download(self, artifact_uri: str, destination: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        try:
            # The tracking URI resolves `mlflow-artifacts:/` URIs to the server that serves them.
            return Path(download_artifacts(artifact_uri=artifact_uri, dst_path=str(destination),
                                           tracking_uri=self.home.tracking_uri))
        except Exception as error:
            if self.home.tracking_server and _unreachable(error):
                raise TrackingServerUnreachable(
                    f"the MLflow tracking server {shown_url(self.home.tracking_uri)} stopped answering while fetching "
                    f"{artifact_uri}; check that it is running and run the command again") from None
            raise RegistryError(f"cannot fetch artifacts {artifact_uri}: {masked(str(error))}") from error


def check_server_answers(uri: str, timeout: float = 10.0) -> None:
    """Fail at once, in one line, when nothing answers at the tracking server's address.

    Any HTTP answer will do (a server behind a login may answer 401 to an anonymous
    probe); only a refused or timed-out connection is an error here.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    try:
        # urllib reads `user:password@` as part of the host name; the probe needs no credentials.
        parts = urllib.parse.urlsplit(uri)
        address = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        with urllib.request.urlopen(f"{address.rstrip('/')}/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = masked(str(getattr(error, "reason", error)))
        raise TrackingServerUnreachable(
            f"cannot reach the MLflow tracking server at {shown_url(uri)} ({reason}); start it (`mlflow server "
            "--backend-store-uri DATABASE_URL --serve-artifacts --host HOST --port PORT`) or correct --tracking-uri"
        ) from None


def param_values(params: dict[str, Any]) -> dict[str, str]:
    """`params` as MLflow params: flattened, as text, masked (a setting may quote a URL with its password,
    an import's source), within MLflow's length limit; callables (an option may be a callback) left out."""
    return {key: masked(str(value))[:6000] for key, value in _flatten(params).items() if not callable(value)}


def _masked_tags(tags: dict[str, str]) -> dict[str, str]:
    return {key: masked(str(value)) for key, value in tags.items()}


def _unreachable(error: BaseException | None) -> bool:
    """Whether `error`, or an error it came from, is a connection that could not be made."""
    import requests

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (requests.exceptions.ConnectionError, ConnectionError)):
            return True
        if "Max retries exceeded" in str(error):  # MLflow's wrapping of urllib3's retry error
            return True
        error = error.__cause__ or error.__context__
    return False


_MLFLOW_MIGRATION_LOCK = 0x67707432_6D6C66  # fixed: every gpt2-registry process contends on the same key


@contextmanager
def _database_lock(url: str) -> Iterator[None]:
    """Connect to the tracking database once, quickly; on an empty PostgreSQL database, hold
    an advisory lock while MLflow creates its tables.

    The connection doubles as a probe: MLflow itself retries a refused connection for
    about half a minute and then prints a page of traceback. A database that MLflow
    has set up already (its `alembic_version` is committed last, with the whole schema)
    needs no lock: MLflow only checks it, and never migrates an existing schema by itself.
    """
    from sqlalchemy import create_engine, inspect, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    postgres = url.startswith("postgresql")
    engine = create_engine(url, poolclass=NullPool, **({"connect_args": {"connect_timeout": 10}} if postgres else {}))
    try:
        try:
            connection = engine.connect()
        except SQLAlchemyError as error:
            raise UsageError(connection_problem(url, error, "--tracking-uri")) from None
        with connection:
            locked = postgres and not inspect(connection).has_table("alembic_version")
            if locked:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MLFLOW_MIGRATION_LOCK})
            connection.commit()
            try:
                yield
            finally:
                if locked:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MLFLOW_MIGRATION_LOCK})
                    connection.commit()
    finally:
        engine.dispose()


def _use_write_ahead_log(database: Path) -> None:
    """Put MLflow's SQLite database in WAL mode (kept in the file), as the lineage store is.

    In SQLite's default rollback mode a reader blocks a writer's commit, so many
    processes registering and reading at once spend most of their time in busy waits.
    """
    import sqlite3

    if not database.exists():
        return
    connection = sqlite3.connect(database, timeout=30)
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
            connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()


def local_path(artifact_uri: str) -> Path | None:
    """The folder behind a `file://` artifact URI, or None for remote stores."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(artifact_uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" and artifact_uri.startswith("/"):
        return Path(artifact_uri)
    return None


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = ",".join(str(v) for v in value)
        elif value is not None:
            flat[name] = value
    return flat
