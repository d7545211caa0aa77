"""One recorder turns any capability's result into a registered variant.

Order matters for "all or nothing": the artifacts are written and hashed in a
staging folder and flushed to disk, then logged to an MLflow run, the model
version is registered, the run is finished, and last the lineage row is
committed. The lineage row is the commit point: a variant without one is
half-made, and on any failure before it the recorder removes what it made
(`gpt2reg doctor --repair` removes what a killed process left behind).

After the commit the recorder redraws each parent's lineage picture so that
the parent's run shows its new child. That step can only leave a picture
stale, never a variant damaged: it replaces files by renames and turns its
own errors into a warning (see `Recorder._refresh_lineage_picture`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from registry import artifacts, datasets, leases, serving
from registry.artifacts import MANIFEST, MODEL_ARTIFACT, weights_path
from registry.capability import CapabilityResult
from registry.tracking import TAG_PREFIX, param_values
from registry.lineage_graph import LineageEdge, LineageGraph, LineageNode, read_lineage
from registry.variant import Variant, variant_from_row

if TYPE_CHECKING:
    from registry.home import Home
    from registry.lineage import LineageStore
    from registry.tracking import Tracker

CHILDREN_DRAWN = 24  # a parent's picture shows its newest children; the others become one "+N more" node
# A picture (and its lineage.json) shows this many generations of ancestors: a chain 1,000 generations
# deep would otherwise be drawn whole at every registration (seconds, and a picture 240,000 pixels wide).
GENERATIONS_DRAWN = 12
log = logging.getLogger(__name__)


def read_backbone_config(preset_dir: Path) -> dict:
    from backends.configs import BACKBONE_CONFIG_KEYS

    config = json.loads((preset_dir / "config.json").read_text(encoding="utf-8"))
    inner = config.get("config", config)
    return {key: inner[key] for key in BACKBONE_CONFIG_KEYS if key in inner}


def metric_deltas(child: dict[str, float], parent: dict[str, float]) -> dict[str, float]:
    return {
        key: child[key] - parent[key]
        for key in sorted(set(child) & set(parent))
        if isinstance(child[key], (int, float)) and isinstance(parent[key], (int, float))
        and math.isfinite(child[key]) and math.isfinite(parent[key])
    }


class RunInProgress:
    """An MLflow run begun when a capability starts its work (`Recorder.begin`): status RUNNING, its
    options as params and its data sets as inputs, a heartbeat where the store is a server's, and the
    figures the capability reports as it works (`log_step`) streamed in, so that the UI shows a long
    run as it goes. `Recorder.record` ends it with the variant; `Recorder.record_failure` as failed or
    killed; `Recorder.discard` deletes it (bad input is no run worth keeping).
    """

    # Points reach the store in batches: the first as soon as there is one to write (the UI shows the
    # run's curves from its first steps), then at most one write per this many seconds.
    FLUSH_SECONDS = 2.0

    def __init__(self, tracker: "Tracker", run, params: dict[str, str], heartbeat: leases.Heartbeat):
        self.tracker = tracker
        self.run = run
        self.run_id: str = run.info.run_id
        self.params = params  # as logged, for `Recorder.record` to add only what the work decided
        self.heartbeat = heartbeat
        self.streamed: dict[str, set[int]] = {}  # metric -> the steps written so far
        self._pending: list = []
        self._written_at: float | None = None

    def log_step(self, step: int, **values: float | None) -> None:
        """Figures at one step of the work (``train_loss=..., learning_rate=...``); None and non-finite
        values are left out."""
        import time

        from mlflow.entities import Metric

        now = time.time()
        for key, value in values.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self._pending.append(Metric(key, float(value), int(now * 1000), int(step)))
        if self._written_at is None or now - self._written_at >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self, hold: set[str] | None = None) -> None:
        """Write the pending points but the newest of each curve in `hold` (of every curve by default).

        A curve's newest point waits: the run's end logs each curve's last point once, as the variant's
        figure (with its model and data set), and MLflow would otherwise show that step twice. A store
        that fails a write loses those points from the stream, never the work: the end logs them.
        """
        import time

        newest = {point.key: index for index, point in enumerate(self._pending) if hold is None or point.key in hold}
        held = set(newest.values())
        points = [point for index, point in enumerate(self._pending) if index not in held]
        self._pending = [point for index, point in enumerate(self._pending) if index in held]
        if not points:
            return
        self._written_at = time.time()
        for start in range(0, len(points), 1000):  # MLflow's log_batch limit
            batch = points[start : start + 1000]
            try:
                self.tracker.client.log_batch(self.run_id, metrics=batch)
            except Exception as error:
                from registry.errors import masked

                log.debug("streamed metrics not recorded: %s", masked(str(error)))
                continue
            for point in batch:
                self.streamed.setdefault(point.key, set()).add(point.step)

    def stop(self, curves: set[str] | frozenset = frozenset()) -> None:
        """The stream's end: write what is pending but the newest point of each of `curves` (the curves
        the run's end logs whole), and stop the heartbeat."""
        self.flush(hold=set(curves))
        self.heartbeat.stop()


class Recorder:
    """Records into one home's stores: its MLflow tracker and its lineage store.

    ``loader`` is handed to the variants it returns, for `Variant.load()`.
    """

    def __init__(self, home: Home, tracker: Tracker, lineage_store: LineageStore, *,
                 loader: Callable[[Variant], Any] | None = None):
        self.home = home
        self.tracker = tracker
        self.lineage_store = lineage_store
        self.loader = loader

    def begin(self, *, name: str, operation: str, parent: "Variant | None", options: dict[str, Any],
              uses: list, staging: Path, lease: leases.Lease | None = None) -> RunInProgress:
        """The run of a capability that starts its work now, under the lease of its staging folder:
        RUNNING, with `options` as params and `uses` (`registry.datasets.DataSetUse`) as inputs."""
        # Runs in a store other than the home's own files carry a heartbeat too: a lease file
        # on this machine says nothing to a teammate's doctor. Its period is read before the
        # run starts, so that a bad setting fails before anything is made.
        period = None if self.home.is_local else leases.heartbeat_seconds()
        lease = lease or leases.lease_of(staging)
        tags = {f"{TAG_PREFIX}operation": operation,
                **({f"{TAG_PREFIX}parent": parent.ref} if parent is not None else {}),
                **({leases.LEASE_TAG: lease.tag} if lease is not None else {}),
                **({leases.HEARTBEAT_TAG: leases.heartbeat_now()} if period else {})}
        tracker = self.tracker
        run = tracker.start_run(run_name=f"{name} ({operation})", tags=tags)
        run_id = run.info.run_id
        try:
            params = tracker.log_params(run_id, {"operation": operation, **options})
            tracker.log_inputs(run_id, uses)
        except BaseException:
            tracker.delete_run(run_id)
            raise
        heartbeat = leases.Heartbeat(lambda now: tracker.set_run_tag(run_id, leases.HEARTBEAT_TAG, now), period)
        return RunInProgress(tracker, run, params, heartbeat.start())

    def discard(self, started: RunInProgress) -> None:
        """Delete a begun run that made nothing worth a record (the work stopped on bad input)."""
        started.heartbeat.stop()
        self.tracker.delete_run(started.run_id)

    def record(
        self,
        *,
        name: str,
        operation: str,
        parents: list[tuple["Variant", str]],
        result: CapabilityResult,
        staging: Path,
        kind: str = "full",
        started: RunInProgress | None = None,
    ) -> "Variant":
        """Register `result` as a new version of `name`, whole or not at all (see the module's notes).

        Under the lease of the staging folder (`registry.leases`), held until after the lineage
        commit: the run, model version and registered model made before it carry that lease,
        so `gpt2reg doctor` sees them as work in progress, not debris, until then.
        """
        with leases.covering_lease(self.home, staging) as lease:
            return self._record(name=name, operation=operation, parents=parents, result=result,
                                staging=staging, kind=kind, lease=lease, started=started)

    def _record(self, *, name: str, operation: str, parents: list[tuple["Variant", str]],
                result: CapabilityResult, staging: Path, kind: str, lease: leases.Lease,
                started: RunInProgress | None) -> "Variant":
        from backends.configs import parameter_count

        tracker = self.tracker
        lineage = self.lineage_store
        preset_dir = Path(result.preset_dir)
        adapter = kind == "adapter"
        # Adapters and exports have no KerasHub config of their own: they keep their parent's shape.
        config = read_backbone_config(preset_dir) if kind == "full" else dict(parents[0][0].config)
        parameters = int(result.metrics.get("parameters") or parameter_count(config))
        content_hash = artifacts.content_hash(preset_dir)
        manifest = {
            "operation": operation,
            "kind": kind,
            "parents": [{"ref": p.ref, "role": role, "content_hash": p.content_hash} for p, role in parents],
            "content_hash": content_hash,
            "config": config,
            "settings": result.settings,
            "created": datetime.now(timezone.utc).isoformat(),
        }
        (preset_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
        if kind != "full":  # no pyfunc model: the files are logged as they are
            model_dir, artifact_path = preset_dir, weights_path(kind)
        else:
            model_dir, artifact_path = staging / MODEL_ARTIFACT, MODEL_ARTIFACT
            serving.save_pyfunc(preset_dir, model_dir)
        artifacts.fsync_tree(model_dir)
        size_bytes = artifacts.folder_size(preset_dir)

        metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
        metrics.update(parameters=float(parameters), size_bytes=float(size_bytes))
        parent_refs = ",".join(p.ref for p, _ in parents)
        tags = {
            **{f"{TAG_PREFIX}{key}": str(value) for key, value in result.tags.items()},
            **({f"{TAG_PREFIX}base_content_hash": parents[0][0].content_hash} if adapter else {}),
            f"{TAG_PREFIX}operation": operation,
            f"{TAG_PREFIX}kind": kind,
            f"{TAG_PREFIX}parent": parent_refs,
            f"{TAG_PREFIX}content_hash": content_hash,
            f"{TAG_PREFIX}config": json.dumps(config, sort_keys=True),
            leases.LEASE_TAG: lease.tag,
        }
        if started is None:  # a variant made outside a capability's run (create, import): its run starts here
            started = self.begin(name=name, operation=operation, parent=parents[0][0] if parents else None,
                                 options={}, uses=result.datasets, staging=staging, lease=lease)
            begun_here = True
        else:
            begun_here = False
        run, run_id, heartbeat = started.run, started.run_id, started.heartbeat
        version = None
        # The data sets on the edge, by digest: two variants trained on different data are told apart.
        settings = {**result.settings, **({"datasets": [use.to_dict() for use in result.datasets]}
                                          if result.datasets else {})}
        measured_on = {key: datasets.measured_on(key, result.datasets) for key in metrics}
        edges = []
        for parent, role in parents:
            deltas = metric_deltas(
                {k: metrics[k] for k in ("parameters", "size_bytes")},
                {"parameters": parent.parameters, "size_bytes": parent.size_bytes},
            )
            if role in ("parent", "base", "teacher"):
                deltas.update(metric_deltas(metrics, result.parent_metrics))
            edges.append((parent.ref, role, settings, deltas))
        try:
            started.flush(hold=set(result.history))
            tracker.set_run_tags(run_id, tags)
            # What the work decided (a default step count, the device) beside the options it was given;
            # a setting that differs from the option of its name is kept as `<name>.used` (params never change).
            decided = {key if key not in started.params else f"{key}.used": value
                       for key, value in param_values({"operation": operation, **result.settings}).items()
                       if started.params.get(key) != value}
            tracker.log_params(run_id, decided)
            # A tracking server keeps a full variant's files once, as its logged model's (below); a home's
            # own store keeps them in the run, and the logged model's are hard links to them.
            if kind != "full" or not self.home.tracking_server:
                tracker.log_artifacts(run_id, model_dir, artifact_path)
            tracker.log_artifact(run_id, preset_dir / MANIFEST)
            source = f"{run.info.artifact_uri}/{artifact_path}"
            model_id = None
            if kind == "full":
                # An MLflow 3 logged model (params, metrics with their data sets, the model's files): MLflow
                # lists and ranks it, and the registered version is made from it.
                model = tracker.create_logged_model(name, run_id, params={"operation": operation, **result.settings},
                                                    tags=tags)
                model_id, source = model.model_id, f"models:/{model.model_id}"
                tracker.log_model_files(model, model_dir, run_id, artifact_path)
            tracker.log_metrics(run_id, metrics, result.history, model_id=model_id, datasets=measured_on,
                                streamed=started.streamed)
            if model_id is not None:
                tracker.finish_logged_model(model_id)
            for artifact_file, rows in result.tables.items():  # sample generations, shown as tables in the UI
                tracker.log_table(run_id, rows, artifact_file)
            model_version = tracker.register(
                name,
                source=source,
                run_id=run_id,
                tags=tags,
                description=_description(operation, [(p.ref, role) for p, role in parents], metrics, measured_on),
                model_tags={leases.LEASE_TAG: lease.tag},
                model_id=model_id,
            )
            version = int(model_version.version)
            tracker.log_artifacts(
                run_id, self._lineage_files(f"{name}/{version}", operation, parents, metrics, staging), "lineage"
            )
            if model_id is not None:
                # The model card, where the Hub and MLflow users look: the logged model's files, and the run's.
                card = self._model_card_file(
                    Variant(name=name, version=version, kind=kind, operation=operation,
                            parents=tuple(p.ref for p, _ in parents), parameters=parameters, size_bytes=size_bytes,
                            content_hash=content_hash, run_id=run_id, artifact_uri=run.info.artifact_uri,
                            metrics=metrics, config=config, tags={"operation": operation, **result.tags},
                            created_at=datetime.now(timezone.utc)),
                    parents, edges, result.datasets, measured_on, staging)
                tracker.log_model_card(model_id, run_id, card)
            tracker.finish_run(run_id)
            row = lineage.add_variant(
                name=name,
                version=version,
                kind=kind,
                operation=operation,
                config=config,
                parameters=parameters,
                size_bytes=size_bytes,
                content_hash=content_hash,
                run_id=run_id,
                artifact_uri=run.info.artifact_uri,
                metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
                tags={"operation": operation, **result.tags,
                      **({"base_content_hash": parents[0][0].content_hash} if adapter else {})},
                parents=edges,
            )
        except BaseException:
            heartbeat.stop()
            if version is not None:
                tracker.delete_version(name, version)
            if begun_here:
                tracker.delete_run(run_id)
            else:  # the run of the work stays, to be ended as failed or killed (`record_failure`) with its figures
                tracker.delete_run_files(run_id)
            raise
        heartbeat.stop()
        # The variant is committed: what follows only redraws its parents' pictures and never undoes it.
        committed_at = _now()
        for parent in {p.ref: p for p, _ in parents}.values():
            self._refresh_lineage_picture(parent, staging, committed_at)
        # Its parents are the edges just committed, in their order: no need to read them back.
        return variant_from_row(row, [p.ref for p, _ in parents], loader=self.loader)

    def record_failure(self, *, name: str, operation: str, parent: "Variant | None", failure: BaseException,
                       datasets: list | None = None, started: RunInProgress | None = None) -> str:
        """End the work's run (`started`, else a new one) as FAILED, or KILLED for an interrupted one
        (Ctrl-C, SIGTERM), with the error and what was measured before it; nothing is registered.

        ``failure`` is any exception: a `RunFailed` carries what the capability measured
        (``result``); a `CapabilityFailed` names the plugin, kept as a tag.
        """
        from registry.errors import RegistryError, one_line

        tracker = self.tracker
        result = getattr(failure, "result", None)
        if not isinstance(result, CapabilityResult):
            result = CapabilityResult()
        killed = isinstance(failure, KeyboardInterrupt)
        ended = "killed" if killed else "failed"
        # The project's own errors read as sentences; anything else keeps its type.
        error = ("interrupted before the variant was registered" if killed
                 else str(failure) if isinstance(failure, RegistryError) else one_line(failure))
        tags = {f"{TAG_PREFIX}operation": operation, f"{TAG_PREFIX}error": error[:5000]}
        if parent is not None:
            tags[f"{TAG_PREFIX}parent"] = parent.ref
        if getattr(failure, "plugin", None):
            tags[f"{TAG_PREFIX}plugin"] = failure.plugin
        if started is None:
            run = tracker.start_run(run_name=f"{name} ({operation}, {ended})", tags=tags)
            run_id, logged, streamed = run.info.run_id, {}, {}
        else:
            started.stop(curves=set(result.history))
            run_id, logged, streamed = started.run_id, started.params, started.streamed
        try:
            if started is not None:
                tracker.set_run_tags(run_id, tags)
                tracker.client.update_run(run_id, name=f"{name} ({operation}, {ended})")
            tracker.log_params(run_id, {key: value for key, value in
                                        param_values({"operation": operation, **result.settings}).items()
                                        if key not in logged})
            if started is None:
                tracker.log_inputs(run_id, datasets or [])
            metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
            tracker.log_metrics(run_id, metrics, result.history, streamed=streamed)
        finally:
            tracker.finish_run(run_id, status=ended.upper())
        return run_id

    def log_generation(self, variant: Variant, result: CapabilityResult) -> str:
        """A generation's settings and outputs as an MLflow run of its own (the outputs as a table); its id."""
        outputs = result.output.get("outputs", [])
        run = self.tracker.start_run(run_name=f"generate {variant.ref}"[:250],
                                     tags={f"{TAG_PREFIX}generation": variant.ref})
        try:
            self.tracker.log_params(run.info.run_id, {"model": variant.ref, **result.settings})
            rows = [{"prompt": item["prompt"], "text": item["text"], "new_tokens": len(item["token_ids"]),
                     "finish_reason": item["finish_reason"]} for item in outputs]
            self.tracker.log_table(run.info.run_id, rows, "generations.json")
        finally:
            self.tracker.finish_run(run.info.run_id)
        return run.info.run_id

    def record_metrics(self, variant: Variant, metrics: dict[str, float], *, data_digest: str | None = None,
                       tables: dict[str, list[dict]] | None = None, datasets: list | None = None) -> None:
        """Figures measured on an existing variant, onto its MLflow run and logged model (with the data
        set each was measured on) and its lineage row (whose edges then hold the change of each figure
        its parents and children hold too)."""
        from registry import datasets as data_sets

        metrics = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        uses = list(datasets or [])
        if variant.run_id:
            models = self.tracker.logged_models_of(variant.run_id) if variant.kind == "full" else []
            self.tracker.log_inputs(variant.run_id, uses)
            self.tracker.log_metrics(variant.run_id, metrics, model_id=models[0].model_id if models else None,
                                     datasets={key: data_sets.measured_on(key, uses) for key in metrics})
            self._describe_version(variant, {**variant.metrics, **metrics}, models[0].model_id if models else None)
            if data_digest:
                self.tracker.set_run_tag(variant.run_id, "gpt2reg.eval_data", data_digest)
            for artifact_file, rows in (tables or {}).items():
                self.tracker.log_table(variant.run_id, rows, artifact_file)
        self.lineage_store.update_metrics(variant.name, variant.version, metrics)

    def _describe_version(self, variant: Variant, metrics: dict[str, float], model_id: str | None) -> None:
        """The version's description again, with figures recorded after its registration; the data set of
        each figure as its logged model holds it."""
        from types import SimpleNamespace

        measured_on = {}
        if model_id is not None:
            for metric in self.tracker.client.get_logged_model(model_id).metrics or []:
                if metric.dataset_name:
                    measured_on[metric.key] = SimpleNamespace(name=metric.dataset_name, digest=metric.dataset_digest)
        parents = [(edge.parent_ref, edge.role) for edge in self.lineage_store.parents(variant.name, variant.version)]
        self.tracker.describe_version(variant.name, variant.version,
                                      _description(variant.operation, parents, metrics, measured_on))

    def _model_card_file(self, variant: Variant, parents, edges: list, uses: list, measured_on: dict,
                         staging: Path) -> Path:
        """`variant`'s model card (Hugging Face's format, `registry.model_card`) as README.md in a new folder;
        `edges`: the lineage edges into it, (parent ref, role, settings, metric deltas), as they are recorded."""
        from registry.model_card import is_quality_metric, model_card

        graph = self._ancestry(variant.ref, [p for p, _ in parents])
        graph.nodes[variant.ref] = LineageNode.of(variant)
        for parent_ref, role, settings, deltas in edges:
            graph.edges.append(LineageEdge(parent=parent_ref, child=variant.ref, operation=variant.operation,
                                           role=role, settings=settings, metric_deltas=deltas))
        evaluations = [{"metric": key, "value": value,
                        "dataset": measured_on[key].to_dict() if measured_on.get(key) else None}
                       for key, value in sorted(variant.metrics.items()) if is_quality_metric(key)]
        folder = Path(tempfile.mkdtemp(prefix="model-card-", dir=staging))
        (folder / "README.md").write_text(
            model_card(variant, graph, datasets=[use.to_dict() for use in uses], evaluations=evaluations),
            encoding="utf-8")
        return folder

    def _lineage_files(self, new_ref, operation, parents, metrics, staging: Path) -> Path:
        """The new variant's ancestry, as lineage.json and lineage.png.

        Ancestors only: a new variant has no children yet. Its siblings are left out,
        or every registration under a busy parent would draw (and cost) more.
        """
        read_at = _now()  # before reading: see `_refresh_lineage_picture`
        graph = self._ancestry(new_ref, [p for p, _ in parents])
        graph.nodes[new_ref] = LineageNode(ref=new_ref, operation=operation, metrics=dict(metrics))
        graph.edges.extend(LineageEdge(parent=p.ref, child=new_ref, operation=operation, role=role) for p, role in parents)
        graph.extras["lineage_read_at"] = read_at
        return _draw(graph, staging / "lineage")

    def _ancestry(self, root: str, variants: list["Variant"]) -> LineageGraph:
        """The variants and their ancestors up to GENERATIONS_DRAWN generations back, and the edges
        among them, around `root` (``extras["oldest_drawn"]`` names where older ones were left out)."""
        graph = LineageGraph(root=root)
        for variant in variants:
            graph.add(read_lineage(self.lineage_store, variant, descendants=False, generations=GENERATIONS_DRAWN))
        return graph

    def _refresh_lineage_picture(self, parent: "Variant", staging: Path, committed_at: str) -> None:
        """Redraw `parent`'s lineage picture with its ancestors and newest children, so that a
        parent's run shows what was made from it, the child committed at `committed_at` included.

        This runs after the commit point, so it never fails the registration: an error is a
        warning and leaves the old picture. The files are replaced by renames, so a killed
        process leaves the old picture or the new one, and at most a work folder in staging
        (`gpt2reg doctor` removes it).

        Where the artifacts are files of this machine, one process at a time redraws a given
        parent (a lock on its lineage folder), and each picture records when its reading of
        the lineage began. A child committed before that is in the picture already: of many
        children registered at once, the first to get the lock draws them all and the others
        find their parent drawn with them.
        """
        from registry.tracking import local_path

        try:
            folder = local_path(parent.artifact_uri or "")
            if folder is None:  # the artifacts live on a tracking server: log the files again
                drawn = self._draw_family(parent, Path(tempfile.mkdtemp(dir=staging)), _now())
                self.tracker.log_artifacts(parent.run_id, drawn, "lineage")
                return
            target = (folder / "lineage").resolve()
            if not target.is_relative_to(self.home.artifact_root.resolve()):
                return  # never write outside the home's artifact store
            target.mkdir(parents=True, exist_ok=True)
            with _locked(target):
                if _read_at(target) >= committed_at:
                    return  # drawn from a reading that began after this child's commit
                drawn = self._draw_family(parent, Path(tempfile.mkdtemp(dir=staging)), _now())
                for name in ("lineage.png", "lineage.json"):  # the JSON last: it holds the reading's time
                    os.replace(drawn / name, target / name)
        except Exception as error:  # the variant is committed; a stale picture is no reason to fail
            from registry.errors import masked

            log.warning("warning: the lineage picture of %s was not redrawn (%s); the new variant is registered",
                        parent.ref, masked(str(error)))

    def _draw_family(self, parent: "Variant", folder: Path, read_at: str) -> Path:
        """`parent`'s ancestors and its newest CHILDREN_DRAWN children, drawn in `folder`."""
        graph = self._ancestry(parent.ref, [parent])
        store = self.lineage_store
        # The newest children only, and a count of all: a busy parent has thousands.
        children = store.child_count(parent.name, parent.version)
        drawn = store.children(parent.name, parent.version, newest=CHILDREN_DRAWN)  # oldest first
        # The children's rows and their parents in a query each, not two per child: a busy
        # parent's picture would otherwise cost a dozen milliseconds more than a quiet one's.
        rows = store.variants(edge.child_ref for edge in drawn)
        parents_of = store.parent_refs(row.id for row in rows.values())
        for edge in drawn:
            row = rows.get(edge.child_ref)
            if row is None:
                continue
            graph.nodes[row.ref] = LineageNode.of(variant_from_row(row, parents_of.get(row.id, ())))
            graph.edges.append(LineageEdge(parent=edge.parent_ref, child=edge.child_ref, operation=edge.operation,
                                           role=edge.role, settings=edge.settings, metric_deltas=edge.metric_deltas))
        graph.omitted_children[parent.ref] = children - len(drawn)
        graph.extras.update(lineage_read_at=read_at, children=children)
        return _draw(graph, folder)


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive `flock` on a folder, released when the block ends or the process dies."""
    import fcntl

    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _now() -> str:
    # Fixed width (always microseconds, always UTC), so that two readings compare as text too.
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _read_at(folder: Path) -> str:
    """When the lineage drawn in `folder` was read ("" when there is none, or it cannot be read)."""
    try:
        return str(json.loads((folder / "lineage.json").read_text(encoding="utf-8")).get("lineage_read_at", ""))
    except (OSError, ValueError, TypeError, AttributeError):
        return ""


def _draw(graph: LineageGraph, folder: Path) -> Path:
    from registry import lineage_picture

    folder.mkdir(exist_ok=True)
    (folder / "lineage.json").write_text(json.dumps(graph.to_dict(), indent=2, default=str), encoding="utf-8")
    lineage_picture.draw(graph, folder / "lineage.png")
    return folder


def _description(operation: str, parents: list, metrics: dict[str, float], measured_on: dict | None = None) -> str:
    """The model version's description: its parents (`(ref, role)`), and its figures where the version's
    page shows them (MLflow's page has no place for a version's metrics of its own); `measured_on` maps a
    figure to the data set (with `name` and `digest`) it was measured on."""
    from registry.comparison import NOT_COMPARED
    from registry.lineage.store import parse_ref

    lines = [f"GPT-2 variant made by `{operation}`."]
    for ref, role in parents:
        parent_name, parent_version = parse_ref(ref)
        lines.append(f"- {role}: [{ref}](#/models/{parent_name}/versions/{parent_version})")
    lines.append(f"- parameters: {int(metrics['parameters']):,}; size: {int(metrics['size_bytes']):,} bytes")
    figures = sorted(key for key in metrics if key not in NOT_COMPARED and math.isfinite(metrics[key]))
    if figures:
        lines += ["", "| metric | value | measured on |", "|---|---|---|"]
        for key in figures:
            data = (measured_on or {}).get(key)
            lines.append(f"| {key} | {metrics[key]:,.4g} | {f'{data.name} ({data.digest})' if data else '-'} |")
    return "\n".join(lines)
