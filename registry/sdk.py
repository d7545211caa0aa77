"""The Python SDK: the same registry the `gpt2reg` CLI works on.

Example:
    >>> from registry import Registry
    >>> reg = Registry("mlruns")
    >>> base = reg.create("base", config="tiny", seed=0)
    >>> tuned = reg.run("finetune", base, data=["notes.txt"], steps=20)
    >>> onnx = reg.run("export", tuned, format="onnx", quantize="int8", out="exported/onnx-int8")
    >>> reg.alias(tuned, "champion")
    >>> reg.get("base-finetune@champion").load().generate("Hello", max_length=20)
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry import references
from registry.capability import CapabilityResult, sample_generations
from registry.errors import NotFoundError, UsageError, masked
from registry.home import Home
from registry.pipeline import Pipeline
from registry.variant import Variant, document_from_row, read_variant, variant_from_row

if TYPE_CHECKING:
    from registry.lineage import LineageVariant
    from registry.recorder import Recorder

KERAS_LOADABLE_EXPORTS = ("keras", "hf")  # export formats that are also KerasHub-loadable checkpoints


def best_of(variants: list[Variant], metric: str = "perplexity", *, max_size_mb: float | None = None,
            max_parameters: int | None = None, higher_is_better: bool | None = None) -> Variant | None:
    """What `Registry.search` chooses among `variants` (already listed: a store of thousands is read once)."""
    from registry.comparison import higher_is_better as higher_by_default

    higher = higher_by_default(metric) if higher_is_better is None else higher_is_better
    candidates = [
        v for v in variants
        if isinstance(v.metrics.get(metric), (int, float))
        and (max_size_mb is None or v.size_bytes <= max_size_mb * 1e6)
        and (max_parameters is None or v.parameters <= max_parameters)
    ]
    if not candidates:
        return None
    return (max if higher else min)(candidates, key=lambda v: v.metrics[metric])


class Registry:
    """A registry home: MLflow tracking + model registry, and the lineage store."""

    def __init__(self, home: str | Path | None = None, *, tracking_uri: str | None = None,
                 lineage_url: str | None = None, progress=None):
        self.home = Home.resolve(home, tracking_uri=tracking_uri, lineage_url=lineage_url)
        self.progress = progress
        self._lineage = None
        self._reader = None
        self._tracker = None

    # ------------------------------------------------------------ stores

    @property
    def lineage_store(self):
        if self._lineage is None:
            from registry.lineage import LineageStore
            from registry.relocation import follow_move

            self._require_home(self.home.lineage_url.startswith("sqlite:"))
            store = LineageStore(self.home.lineage_url)
            try:
                follow_move(self.home, store)  # a moved or copied home: its stored locations follow it
            except BaseException:
                store.close()
                raise
            self._lineage = store
        return self._lineage

    @property
    def _reads(self):
        """Where reads go: the open lineage store, else a local SQLite store read with the standard
        library (`registry.lineage.reads`: no SQLAlchemy to import), else the store opened now."""
        if self._lineage is not None:
            return self._lineage
        if self._reader is None:
            from registry.lineage.reads import local_reader
            from registry.relocation import moved_from

            # A moved home, or a store to migrate, is opened as a store: that relocates or migrates it.
            reader = local_reader(self.home.lineage_url)
            if reader is not None and moved_from(self.home) is None:
                self._reader = reader
        return self._reader if self._reader is not None else self.lineage_store

    @property
    def tracker(self):
        if self._tracker is None:
            from registry.relocation import follow_move
            from registry.tracking import Tracker

            self._require_home(self.home.is_local)
            if self._lineage is None:  # an open lineage store has relocated both stores already
                follow_move(self.home)  # a moved or copied home: its stored locations follow it
            self._tracker = Tracker(self.home)
        return self._tracker

    def init(self) -> "Registry":
        """Create the home and both stores (idempotent)."""
        self.home.create()
        self.lineage_store  # noqa: B018 - opening runs the migrations
        self.tracker.experiment_id  # noqa: B018 - creates the experiment and MLflow's tables
        return self

    def _require_home(self, store_is_a_file: bool) -> None:
        # Reading never creates a store file: only init() (and commands that make variants) do.
        # A database server's store is there or not whatever this machine holds.
        if store_is_a_file and not self.home.path.is_dir():
            raise UsageError(f"no registry at {self.home.path}; run `gpt2reg init` (or pass --home)")

    def close(self) -> None:
        if self._lineage is not None:
            self._lineage.close()
            self._lineage = None

    # ------------------------------------------------------------ reading

    def _variant(self, row: LineageVariant) -> Variant:
        return read_variant(self._reads, row, loader=self.load)

    def get(self, reference: "str | Variant") -> Variant:
        """Resolve `NAME`, `NAME/VERSION` or `NAME@ALIAS`."""
        if isinstance(reference, Variant):
            return reference
        ref = references.parse(reference)
        if not self.home.exists():
            raise NotFoundError(f"no variant {reference}: the registry at {self.home.path} is empty; see `gpt2reg list`")
        if ref.alias is not None:
            from registry import model_aliases

            version = model_aliases.version(self.home, ref.name, ref.alias)
            if version is None:  # not in a local MLflow file, or not there: MLflow's client answers (or says why not)
                version = self.tracker.resolve_alias(ref.name, ref.alias)
            row = self._reads.get(ref.name, version)
        elif ref.version is not None:
            row = self._reads.get(ref.name, ref.version)
        else:
            row = self._reads.latest(ref.name)
        if row is None:
            raise NotFoundError(f"no variant {reference} in {self.home.path}; see `gpt2reg list`")
        return self._variant(row)

    def list(self, name: str | None = None) -> list[Variant]:
        if not self.home.exists():
            return []
        store = self._reads
        rows = store.list(name)
        # Every variant's parents in one query, not one per variant (a store holds thousands).
        parents = store.parent_refs(None if name is None else [row.id for row in rows])
        return [variant_from_row(row, parents.get(row.id, ()), loader=self.load) for row in rows]

    def list_documents(self, name: str | None = None) -> list[dict]:
        """`[v.to_dict() for v in self.list(name)]`, made straight from the rows (`list --json`)."""
        if not self.home.exists():
            return []
        store = self._reads
        if store is not self._reader:  # the store's own rows: their dicts are copied, as `Variant` does
            return [variant.to_dict() for variant in self.list(name)]
        rows = store.list(name)
        parents = store.parent_refs(None if name is None else [row.id for row in rows])
        return [document_from_row(row, parents.get(row.id, ())) for row in rows]

    def aliases(self, variant: "str | Variant") -> list[str]:
        variant = self.get(variant)
        return sorted(a for a, v in self.tracker.aliases(variant.name).items() if v == variant.version)

    def alias(self, variant: "str | Variant", alias: str) -> Variant:
        variant = self.get(variant)
        self.tracker.set_alias(variant.name, references.check_alias(alias), variant.version)
        return variant

    def preset_path(self, variant: "str | Variant") -> Path:
        """The variant's KerasHub preset folder (downloaded first from a remote store);
        see `registry.variant_files`."""
        from registry.variant_files import VariantFiles

        return VariantFiles(self.home, lambda: self.tracker).preset_path(self.get(variant))

    def load(self, variant: "str | Variant", *, base: "str | Variant | None" = None, dtype: str | None = None):
        """The variant as a KerasHub `GPT2CausalLM`; an adapter is loaded onto its base.

        An adapter is pinned to its base's content hash: `base=` may name another
        variant only when it holds exactly the same weights.
        """
        from backends import keras_gpt2
        from registry.variant_files import check_pinned_base, checked

        variant = self.get(variant)
        path = checked(variant, self.preset_path(variant))
        if variant.kind == "export" and variant.tags.get("format") not in KERAS_LOADABLE_EXPORTS:
            raise UsageError(
                f"{variant.ref} is a {variant.tags.get('format')} export, which Keras does not load; "
                f"use its source {variant.parent}, or run the files with their own runtime"
            )
        if variant.kind != "adapter":
            return self._with_runtime_cache(keras_gpt2.load(path, dtype=dtype))
        from backends import lora

        base_variant = self.get(base or variant.parent)
        check_pinned_base(variant, base_variant)
        lm = self.load(base_variant, dtype=dtype)
        lora.load_adapter(lm, path)
        return lm

    def _decoders(self):
        from registry.inference import VariantDecoders

        return VariantDecoders(get=self.get, preset_path=self.preset_path, load=self.load,
                               runtime_cache=self.home.runtimes if self.home.is_local else None)

    def light_decoder(self, variant: "str | Variant", *, runtime: str = "auto", xla: bool | None = None):
        """The variant's onnxruntime (or LiteRT) decoder built from its files without TensorFlow, kept
        loaded in this process; None when the variant needs Keras (see `registry.inference`)."""
        return self._decoders().light(self.get(variant), runtime=runtime, xla=xla)

    def light_scorer(self, variant: "str | Variant"):
        """A perplexity scorer of the variant through onnxruntime, from its files without TensorFlow
        (`backends.perplexity.RuntimeScorer`), kept loaded; None when the variant needs Keras."""
        return self._decoders().light_scorer(self.get(variant))

    def keras_decoder(self, variant: "str | Variant", *, runtime: str = "auto", xla: bool | None = None,
                      device: str = "auto"):
        """The variant's decoder through its KerasHub model, which is kept loaded in this process."""
        return self._decoders().keras(self.get(variant), runtime=runtime, xla=xla, device=device)

    def release(self, variant: "str | Variant | None" = None) -> int:
        """Free what this process keeps loaded for `variant` (for every variant when None);
        returns how many decoders and models were let go."""
        from registry.inference import KEPT

        return KEPT.release(None if variant is None else self.get(variant).content_hash)

    def _with_runtime_cache(self, lm):
        # Decoders for onnxruntime and LiteRT are built from the weights once and kept in
        # the home by the weights' digest (`backends.fast_decoding`), so later runs reuse them.
        # The folder is kept beside the model (`backends.loaded_model`), not on it: users get
        # the bare `GPT2CausalLM`, and its decoders find the folder from it.
        if self.home.is_local:
            from backends.loaded_model import LoadedModel

            LoadedModel.of(lm).runtime_cache = str(self.home.runtimes)
        return lm

    def lineage(self, variant: "str | Variant", *, descendants: bool = True) -> dict[str, Any]:
        """The variant's family as JSON-ready data (`gpt2reg lineage --json`): its ancestors and
        (unless ``descendants=False``) descendants, as nodes and edges."""
        return self.lineage_graph(variant, descendants=descendants).to_dict()

    def lineage_graph(self, variant: "str | Variant", *, descendants: bool = True):
        """The same family as a typed `registry.lineage_graph.LineageGraph`, as the renderers read it."""
        from registry.lineage_graph import read_lineage

        return read_lineage(self._reads, self.get(variant), descendants=descendants)

    def search(self, metric: str = "perplexity", *, max_size_mb: float | None = None,
               max_parameters: int | None = None, higher_is_better: bool | None = None,
               name: str | None = None) -> Variant | None:
        """The best variant by `metric` among those within the size and parameter limits, or None.

        Lower is better for perplexity, losses and sizes; higher for accuracy,
        F1, BLEU, ROUGE and speed (`higher_is_better` overrides).

        >>> reg.search("perplexity", max_size_mb=50).ref
        'quickstart-int8/1'
        """
        return best_of(self.list(name), metric, max_size_mb=max_size_mb, max_parameters=max_parameters,
                       higher_is_better=higher_is_better)

    def compare(self, variants: list, *, metric: str | None = None, log: bool = True,
                chart: str | Path | None = None) -> dict:
        """Variants side by side: quality (`metric`, default perplexity) against size and against greedy
        speed with each Pareto front (`fronts`), and a bar panel per metric two or more hold (`panels`).
        The document and its chart are logged to MLflow as a comparison run.

        >>> reg.compare(["tuned/1", "tuned-int8/1", "student/1"], log=False)["fronts"]
        {'perplexity vs size_bytes': ['tuned/1', 'tuned-int8/1', 'student/1'],
         'perplexity vs greedy_tokens_per_second': ['tuned/1', 'tuned-int8/1']}
        """
        from registry import comparison

        return comparison.compare([self.get(v) for v in variants], metric=metric,
                                  tracker=self.tracker if log else None, chart=chart)

    def compare_versions(self, name: str, *, metric: str | None = None, log: bool = True,
                         chart: str | Path | None = None) -> dict:
        """One metric (default perplexity) over every version of the registered model `name`, as a
        line chart logged to MLflow like `compare`; the series is the document's one panel.

        >>> (series,) = reg.compare_versions("shakespeare", log=False)["panels"]
        >>> [(p["version"], p["operation"], p["y"]) for p in series["points"]]
        [(1, 'finetune', 41.2), (2, 'finetune', 37.9), (3, 'merge', 38.4)]
        """
        from registry import comparison

        ref = references.parse(name)
        if ref.version is not None or ref.alias is not None:
            raise UsageError(f"comparing versions takes a model NAME, not the version {name}: give {ref.name}")
        versions = self.list(ref.name)
        if not versions:
            raise NotFoundError(f"no registered model {ref.name} in {self.home.path}; see `gpt2reg list`")
        return comparison.compare_versions(ref.name, versions, metric=metric,
                                           tracker=self.tracker if log else None, chart=chart)

    def stream(self, variant: "str | Variant", prompts: "str | list[str]", **options):
        """Generate with `variant`, yielding each `StreamEvent` (row, text, token_id, finish_reason)
        as it is produced; the texts of a row join to what `run("generate", ...)` returns."""
        import queue
        import threading

        events: queue.Queue = queue.Queue()
        finished = object()
        outcome: dict[str, Any] = {}

        def work():
            try:
                outcome["result"] = self.run("generate", variant, prompts=prompts, on_text=events.put, **options)
            except BaseException as error:  # handed to the caller's thread below
                outcome["error"] = error
            finally:
                events.put(finished)

        worker = threading.Thread(target=work, name="gpt2reg-generate", daemon=True)
        worker.start()
        while (event := events.get()) is not finished:
            yield event
        worker.join()
        if "error" in outcome:
            raise outcome["error"]

    def log_generation(self, variant: "str | Variant", result: CapabilityResult) -> str:
        """Log a generation's settings and outputs as an MLflow run of its own (the outputs as a
        table), so a sample set can be read in the UI; returns the run id."""
        return self._recorder().log_generation(self.get(variant), result)

    # ------------------------------------------------------------ making variants

    def _pipeline(self) -> Pipeline:
        return Pipeline(home=self.home, variants=self, open_recorder=self._recorder, progress=self._progress)

    def _recorder(self) -> Recorder:
        """The recorder of this home's stores, which are created first when missing."""
        from registry.recorder import Recorder

        self.init()
        return Recorder(self.home, self.tracker, self.lineage_store, loader=self.load)

    def _staging(self) -> AbstractContextManager[Path]:
        return self._pipeline().staging()

    def _record(self, *, name: str, operation: str, parents: list, result: CapabilityResult, staging: Path,
                kind: str = "full", allow_nonfinite: bool = False) -> Variant:
        return self._pipeline().record(name=name, operation=operation, parents=parents, result=result,
                                       staging=staging, kind=kind, allow_nonfinite=allow_nonfinite)

    def create(self, name: str, *, config: str = "tiny", seed: int = 0, allow_nonfinite: bool = False) -> Variant:
        """A new randomly initialised GPT-2 of a named configuration (`allow_nonfinite`: as for `import_`)."""
        from backends.configs import get_config

        references.check_name(name)
        shape = get_config(config)
        self.init()
        with self._staging() as staging:
            from backends import keras_gpt2

            self._progress(description=f"building {config}")
            lm = keras_gpt2.build(shape, seed=seed)
            preset = staging / "preset"
            keras_gpt2.save(lm, preset)
            result = CapabilityResult(
                preset_dir=preset,
                metrics={"parameters": keras_gpt2.parameter_count(lm)},
                settings={"config": config, "seed": seed},
                tables=sample_generations(lm),
            )
            return self._record(name=name, operation="create", parents=[], result=result, staging=staging,
                                allow_nonfinite=allow_nonfinite)

    def import_(self, name: str, source: str, *, allow_nonfinite: bool = False) -> Variant:
        """Import a KerasHub preset folder, a Hugging Face GPT-2 folder, a preset name or hf://org/repo.

        Weights holding NaN or infinite values are refused, or with `allow_nonfinite` registered with a
        ``warning`` tag.
        """
        from backends import model_files
        from registry.pipeline import check_finite_weights

        references.check_import_source(name, source)
        local = Path(source).expanduser()
        if local.exists():
            # Before TensorFlow loads: a folder whose config claims more than its weights hold is refused
            # from the files' headers, in milliseconds, rather than after Keras allocates what it claims.
            model_files.check_import_source(local)
            if local.is_dir() and not allow_nonfinite:
                # The source's own weights scanned too, so that a NaN is refused in a second, not after
                # TensorFlow loads; the converted preset is scanned again below (and by the recorder).
                check_finite_weights(CapabilityResult(preset_dir=local), allow_nonfinite=False)
        from backends import keras_gpt2  # validates the checkpoint itself before the home is touched

        with tempfile.TemporaryDirectory(prefix="gpt2reg-import-") as scratch:
            preset = Path(scratch) / "preset"
            # Recorded (params, manifest) without the password or token a source URL may carry.
            description = {**keras_gpt2.import_model(source, preset), "source": masked(source)}
            self.init()
            parents, provenance = self._provenance(source)
            with self._staging() as staging:
                shutil.move(str(preset), staging / "preset")
                result = CapabilityResult(preset_dir=staging / "preset", settings={**description, **provenance})
                if "://" in source:  # a hub's name for it (hf://owner/name), which its model card names as its base
                    result.tags["source"] = masked(source)
                check_finite_weights(result, allow_nonfinite)  # before the sample generations, which NaN would spoil
                result.tables = sample_generations(keras_gpt2.load(staging / "preset"))
                return self._record(name=name, operation="import", parents=parents, result=result, staging=staging,
                                    allow_nonfinite=allow_nonfinite)

    def run(self, capability: str, variant: "str | Variant | None" = None, *, name: str | None = None,
            device: str = "auto", options: Any = None, allow_nonfinite: bool = False,
            **values) -> "Variant | CapabilityResult":
        """Run any capability; a capability that makes a variant returns the new `Variant`.

        Its options are keywords named as the capability declares them (`--max-new-tokens` is
        ``max_new_tokens``), or one ``options=`` instance of its ``Options`` class, checked already.

        An unexpected error in the capability's own code raises `CapabilityFailed`, which names
        its plugin. When the capability makes a variant, any failure of its run except a
        `UsageError` is recorded as a FAILED MLflow run (the error as a tag) and nothing is
        registered. A plugin whose `before_run`, `after_run` or `on_run_error` raises is
        disabled (see `registry.plugins`); the run goes on without it.

        A new variant whose weights hold NaN or infinite values is refused (`UsageError`), or with
        `allow_nonfinite` registered with a ``warning`` tag.
        """
        if options is not None and values:
            raise UsageError(f"give {capability}'s options as keywords or as options=, not both")
        return self._pipeline().run(capability, variant, name=name, device=device,
                                    options=values if options is None else options, allow_nonfinite=allow_nonfinite)

    def _provenance(self, source: str) -> tuple[list, dict]:
        """Where an imported folder came from, when a registry wrote it (an export's manifest).

        The folder's variant becomes the import's parent (role ``source``) when it
        is in this registry and the folder still holds exactly its weights.
        """
        import json

        from registry import artifacts

        manifest_file = Path(source).expanduser() / artifacts.MANIFEST
        if not manifest_file.is_file():
            return [], {}
        try:
            manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
            recorded_ref, recorded_hash = manifest.get("ref"), manifest["content_hash"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return [], {"provenance": "unreadable gpt2reg manifest"}
        intact = artifacts.content_hash(manifest_file.parent) == recorded_hash
        settings = {"exported_from": recorded_ref or [p.get("ref") for p in manifest.get("parents", [])],
                    "files_match_export": intact}
        if not (intact and recorded_ref and self.home.exists()):
            return [], settings
        try:
            origin = self.get(recorded_ref)
        except (NotFoundError, UsageError):
            return [], settings
        if origin.content_hash != recorded_hash:
            return [], settings  # a different registry's variant of the same name
        return [(origin, "source")], settings

    def record_metrics(self, variant: "str | Variant", metrics: dict[str, float], *, data_digest: str | None = None,
                       tables: dict[str, list[dict]] | None = None, datasets: list | None = None) -> Variant:
        """Attach evaluation figures to an existing variant: its MLflow run and logged model, its lineage
        row, and the change of each figure on the lineage edges to its parents and children that hold it
        too. `datasets`: the `registry.datasets.DataSetUse`s they were measured on."""
        variant = self.get(variant)
        self._recorder().record_metrics(variant, metrics, data_digest=data_digest, tables=tables, datasets=datasets)
        return self.get(variant.ref)

    def record_evaluation(self, variant: "str | Variant", result: CapabilityResult) -> Variant:
        """Record what `run("evaluate", ...)` measured on the variant it measured."""
        return self.record_metrics(variant, result.metrics, data_digest=result.settings.get("data_digest"),
                                   tables=result.tables, datasets=result.datasets)

    def _progress(self, **fields) -> None:
        if self.progress is not None:
            self.progress(**fields)
