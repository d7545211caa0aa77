"""The MLflow side of the store: runs, metrics, artifacts, registered versions, aliases.

Only the core uses this module (capabilities never do). MLflow is imported on
first use so that commands which do not touch it start fast.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from registry.errors import NotFoundError, RegistryError
from registry.home import Home

EXPERIMENT = "gpt2reg"
TAG_PREFIX = "gpt2reg."
_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
_PARAMS_PER_BATCH = 100


def _quiet_mlflow() -> None:
    import os
    import warnings

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The signature is given explicitly; an input example would run the model at save time.
    warnings.filterwarnings("ignore", message=".*input example was not provided.*")
    # MLflow's first connection to a new database runs Alembic migrations that log at INFO.
    for name in ("mlflow", "alembic", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    def __init__(self, home: Home):
        import mlflow
        from mlflow import MlflowClient

        _quiet_mlflow()  # after the import: importing mlflow sets its loggers to INFO

        self.home = home
        self._mlflow = mlflow
        self.client = MlflowClient(tracking_uri=home.tracking_uri, registry_uri=home.tracking_uri)
        self._experiment_id: str | None = None

    # ------------------------------------------------------------ runs

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is not None:
                self._experiment_id = experiment.experiment_id
            else:
                from mlflow.exceptions import MlflowException

                location = self.home.artifact_root.as_uri() if self.home.is_local else None
                try:
                    self._experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
                except MlflowException:  # another process created it first
                    self._experiment_id = self.client.get_experiment_by_name(EXPERIMENT).experiment_id
        return self._experiment_id

    def start_run(self, run_name: str, tags: dict[str, str]):
        return self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = [Param(key, str(value)[:6000]) for key, value in _flatten(params).items()]
        for start in range(0, len(flat), _PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=flat[start : start + _PARAMS_PER_BATCH])

    def log_metrics(self, run_id: str, metrics: dict[str, float], history: dict[str, list[tuple[int, float]]] | None = None) -> None:
        """Final values and curves, in batches (one call per 1000 points, not one per point)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        history = history or {}
        # A metric with a curve is its curve: its last point is the final value.
        points = [
            Metric(key, float(value), now, 0)
            for key, value in metrics.items()
            if key not in history and isinstance(value, (int, float)) and math.isfinite(value)
        ]
        for key, series in history.items():
            points.extend(Metric(key, float(v), now, int(step)) for step, v in series if math.isfinite(v))
        for start in range(0, len(points), _METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=points[start : start + _METRICS_PER_BATCH])

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
        self.client.set_tag(run_id, key, value)

    def delete_run(self, run_id: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_run(run_id)
        except MlflowException:
            pass

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def search_runs(self):
        return self.client.search_runs([self.experiment_id], max_results=50000)

    # ------------------------------------------------------------ registry

    def register(self, name: str, source: str, run_id: str, tags: dict[str, str], description: str):
        from mlflow.exceptions import MlflowException

        try:
            self.client.create_registered_model(name, description="GPT-2 variants registered by gpt2-registry")
        except MlflowException as error:
            if "RESOURCE_ALREADY_EXISTS" not in str(error.error_code):
                raise
        return self.client.create_model_version(
            name=name, source=source, run_id=run_id, tags=tags, description=description
        )

    def delete_version(self, name: str, version: int) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.delete_model_version(name, str(version))
            if not self.client.search_model_versions(f"name='{name}'"):
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

    def download(self, artifact_uri: str, destination: Path) -> Path:
        from mlflow.artifacts import download_artifacts

        try:
            return Path(download_artifacts(artifact_uri=artifact_uri, dst_path=str(destination)))
        except Exception as error:
            raise RegistryError(f"cannot fetch artifacts {artifact_uri}: {error}") from error


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
