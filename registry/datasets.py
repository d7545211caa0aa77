"""The data sets a capability ran on: which files, in which role, with what content.

An option declares the role of the files it names (`option(path=True, dataset="training")`);
before the capability runs, the core describes each such file (or folder) by a digest of its
bytes and its size, and records the descriptions three ways: as MLflow data set inputs of the
run (with MLflow's `mlflow.data.context` tag), beside the metrics measured on them (a logged
model's metrics name their data set), and in the lineage edge's settings under `datasets`, so
that two variants trained on different data are told apart at a glance (`gpt2reg lineage`).

Example:
    >>> from registry.datasets import describe
    >>> describe("notes.txt", "training").to_dict()
    {'name': 'notes.txt', 'digest': '3f1c0d5e9a7b2c41', 'source': '/home/me/notes.txt',
     'context': 'training', 'rows': 1200, 'bytes': 58210}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry.options import DATASET_CONTEXTS, declared

CONTEXT_TAG = "mlflow.data.context"
_DIGEST_CHARS = 16  # MLflow keeps at most 36; 64 bits tell data sets apart
_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataSetUse:
    """One data set as a run used it: name, digest of its content, where it was read, its role, its size."""

    name: str
    digest: str
    source: str
    context: str
    rows: int | None
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe(path: str | Path, context: str) -> DataSetUse:
    """`path` (a file, or a folder of files) in the role `context`: its digest, lines and bytes, read once."""
    if context not in DATASET_CONTEXTS:
        raise ValueError(f"unknown data set context {context!r}; use one of {', '.join(DATASET_CONTEXTS)}")
    root = Path(path).expanduser()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    digest, rows, size = hashlib.sha256(), 0, 0
    for file in files:
        if root.is_dir():  # a folder's digest covers its layout too
            digest.update(str(file.relative_to(root)).encode("utf-8") + b"\0")
        with open(file, "rb") as handle:
            last = b"\n"
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                rows += chunk.count(b"\n")
                size += len(chunk)
                last = chunk[-1:]
            rows += last != b"\n"  # a last line without its newline
    return DataSetUse(name=root.name, digest=digest.hexdigest()[:_DIGEST_CHARS], source=str(root.resolve()),
                      context=context, rows=rows, bytes=size)


def used_by(options_class, options) -> list[DataSetUse]:
    """The data sets `options` name through options declared with a `dataset` role, in declaration order;
    a file named twice in one role counts once."""
    found: dict[tuple[str, str], DataSetUse] = {}
    for option in declared(options_class):
        context = option.spec.dataset
        value = getattr(options, option.name, None)
        if context is None or not value:
            continue
        for path in value if isinstance(value, (list, tuple)) else [value]:
            key = (str(Path(path).expanduser().resolve()), context)
            if key not in found:
                found[key] = describe(path, context)
    return list(found.values())


def mlflow_inputs(uses: list[DataSetUse]) -> list:
    """The uses as MLflow data set inputs of a run (`MlflowClient.log_inputs(run_id, datasets=...)`)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    return [
        DatasetInput(
            dataset=Dataset(name=use.name, digest=use.digest, source_type="local",
                            source=json.dumps({"uri": Path(use.source).as_uri()}),
                            profile=json.dumps({"rows": use.rows, "bytes": use.bytes})),
            tags=[InputTag(key=CONTEXT_TAG, value=use.context)],
        )
        for use in uses
    ]


def measured_on(metric: str, uses: list[DataSetUse]) -> DataSetUse | None:
    """The data set a metric of a new variant was measured on: a training figure on the training data, a
    quality figure (perplexity, a validation loss, a task's score) on the evaluation data, else the validation
    data; a figure of the weights themselves (size, parameters, speed) on none."""
    by_context = {use.context: use for use in uses}
    if metric.startswith("train_"):
        return by_context.get("training")
    if metric in _NOT_MEASURED_ON_DATA or metric.endswith(("_per_second", "_seconds", "_bytes", "parameters")):
        return None
    return by_context.get("evaluation") or by_context.get("validation")


_NOT_MEASURED_ON_DATA = {"parameters", "size_bytes", "speedup", "parameter_compression", "trainable_share",
                         "best_step", "diverged_at_step", "tokens", "train_steps"}
