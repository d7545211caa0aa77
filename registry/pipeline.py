"""The run pipeline: what the core does around a capability's own code.

`Registry.run` hands a capability's name, its options and the variant it runs on
to `Pipeline.run`, which finds the capability and checks its options, names the
new variant, calls the plugins' ``before_run``, ``after_run`` and ``on_run_error``
hooks, gives the capability a work folder (a staging folder in the home when it
makes a variant), lets only the chief of a multi-worker run record, and has the
work recorded (`registry.recorder`): its MLflow run begins with the work (RUNNING,
options, data sets, figures streamed as it goes) and ends with a new variant
together with its copy to ``--out``, both or neither, or as FAILED, or KILLED
when interrupted.

The pipeline knows the registry only through the parts it is given: the home,
a reader of its variants and a way to open its recorder. `Registry.create` and
`Registry.import_` stage and record through it too.
"""

from __future__ import annotations

import errno
import json
import shutil
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol

from registry import artifacts, datasets, references
from registry import options as options_module
from registry.artifacts import MANIFEST
from registry.capability import CapabilityResult, Progress, RunContext, check_result, plugin_code
from registry.errors import NotFoundError, RegistryError, UsageError
from registry.home import Home
from registry.variant import Variant

if TYPE_CHECKING:
    from registry.recorder import Recorder, RunInProgress


class VariantReader(Protocol):
    """What a run reads of its registry; `registry.sdk.Registry` is one.

    Declared here rather than imported: the SDK calls the pipeline, so the pipeline may not import the SDK.
    """

    def get(self, reference: str | Variant) -> Variant: ...

    def load(self, variant: str | Variant, *, base: str | Variant | None = None, dtype: str | None = None) -> Any: ...

    def preset_path(self, variant: str | Variant) -> Path: ...

    def light_decoder(self, variant: str | Variant, *, runtime: str = "auto", xla: bool | None = None) -> Any: ...

    def keras_decoder(self, variant: str | Variant, *, runtime: str = "auto", xla: bool | None = None,
                      device: str = "auto") -> Any: ...

    def light_scorer(self, variant: str | Variant) -> Any: ...

    def lineage_graph(self, variant: str | Variant, *, descendants: bool = True) -> Any: ...


def disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an error it came from, is a full disk (or quota)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(error):  # SQLite's SQLITE_FULL
            return True
        error = error.__cause__ or error.__context__
    return False


def is_chief(device: str) -> bool:
    """Whether this process records: the chief of a multi-worker cluster, or the only worker."""
    from backends.devices import is_chief as cluster_chief
    from backends.devices import uses_cluster

    return cluster_chief() if uses_cluster(device) else True


@dataclass
class Pipeline:
    """Runs capabilities and records what they make, in one home.

    - ``home``: where the staging folders and checkpoints go.
    - ``variants``: reads the variant a run starts from, and is handed to the
      capability's `RunContext` for the variants it reads itself.
    - ``open_recorder``: the recorder of the home's stores, which it creates when
      missing; called before a variant-making run starts its work, so that a store
      that cannot be opened fails the run before the work, not after it.
    - ``progress``: where the capability reports its progress.
    """

    home: Home
    variants: VariantReader
    open_recorder: Callable[[], Recorder]
    progress: Progress = lambda **fields: None

    def run(self, capability: str, variant: str | Variant | None = None, *, name: str | None = None,
            device: str = "auto", options: Any, allow_nonfinite: bool = False) -> Variant | CapabilityResult:
        """Run a capability (see `Registry.run`); a capability that makes a variant returns the new `Variant`.

        `options` is a dict of option values, or the capability's own checked ``Options`` instance.
        `allow_nonfinite`: register a variant whose weights hold NaN or infinite values, with a warning tag,
        rather than refuse it (see `check_finite_weights`).
        """
        from registry import plugins

        found = plugins.capabilities()
        if capability not in found:
            raise NotFoundError(f"no capability {capability!r}; installed: {', '.join(sorted(found))} (see `gpt2reg plugins`)")
        provider = plugins.provider_of(capability)
        with plugin_code(provider, capability):
            cap = found[capability]()
            checked = cap.validate(options)
        # Described before the work, as it reads them: a file changed meanwhile is not what it trained on.
        uses = datasets.used_by(type(checked), checked)
        parent = self.variants.get(variant) if variant is not None else None
        if cap.needs_model and parent is None:
            raise UsageError(f"{capability} needs a model reference")
        if cap.makes_variant:
            if name is None and parent is None:
                raise UsageError(f"{capability} makes a new variant: give it a name")
            name = references.check_name(name or f"{parent.name}-{cap.operation}")
        plugins.call_each("before_run", capability=cap, variant=parent, options=checked)
        try:
            if cap.makes_variant:
                recorder = self.open_recorder()
                with self.staging() as staging:
                    chief = is_chief(device)
                    # The run spans the work: RUNNING from here, with the options and data sets, and the
                    # figures the capability reports as it goes. Only the chief records.
                    started = (recorder.begin(name=name, operation=cap.operation, parent=parent,
                                              options=options_module.as_dict(checked), uses=uses, staging=staging)
                               if chief else None)
                    context = self._context(parent, staging, device, checkpoints=self.home.checkpoints,
                                            step_sink=started.log_step if started else None)
                    if not chief:
                        # Every worker trains its share; only the chief writes checkpoints and records.
                        context.checkpoints = None
                    try:
                        with plugin_code(provider, capability):
                            result = check_result(cap, cap.run(context, checked))
                        result.datasets = uses
                        if not chief:
                            plugins.call_each("after_run", capability=cap, variant=parent, result=result,
                                              new_variant=None)
                            return result
                        parents = ([(parent, cap.parent_role), *result.other_parents] if parent
                                   else list(result.other_parents))
                        new = record_and_deliver(recorder, name=name, operation=cap.operation, parents=parents,
                                                 result=result, staging=staging, kind=cap.variant_kind,
                                                 allow_nonfinite=allow_nonfinite, started=started)
                    except UsageError:
                        if started is not None:  # bad input: nothing worth a run record
                            with suppress(Exception):  # the input's error matters more than the tidying's
                                recorder.discard(started)
                        raise
                    except BaseException as failure:
                        if started is not None and disk_full(failure):
                            # Nothing more can be written: the store is left as it was (see `staging`).
                            with suppress(Exception):
                                recorder.discard(started)
                        elif started is not None:
                            try:
                                recorder.record_failure(name=name, operation=cap.operation, parent=parent,
                                                        failure=failure, datasets=uses, started=started)
                            except Exception as recording_error:  # the run's own error matters more
                                failure.add_note(f"the failed run could not be recorded: {recording_error!r}")
                        raise
                    for folder in result.discard_after_record:
                        shutil.rmtree(folder, ignore_errors=True)
            else:
                with tempfile.TemporaryDirectory(prefix="gpt2reg-") as scratch:
                    context = self._context(parent, Path(scratch), device)
                    with plugin_code(provider, capability):
                        result = check_result(cap, cap.run(context, checked))
                    result.datasets = uses
                new = None
        except BaseException as error:
            plugins.call_each("on_run_error", capability=cap, variant=parent, error=error)
            raise
        plugins.call_each("after_run", capability=cap, variant=parent, result=result, new_variant=new)
        return new if new is not None else result

    def _context(self, parent: Variant | None, workdir: Path, device: str, *,
                 checkpoints: Path | None = None, step_sink=None) -> RunContext:
        from registry import plugins

        return RunContext(variant=parent, workdir=workdir, progress=self.progress, device=device,
                          checkpoints=checkpoints, hook=plugins.load_plugins().hook, variants=self.variants,
                          home=self.home, step_sink=step_sink)

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A new folder in the home's staging area for a variant being made, removed afterwards.

        The folder is named after a lease (`registry.leases`) held until it is removed: the
        recorder's run and model version carry the same lease, so that `gpt2reg doctor` leaves
        the work alone while it goes on, and finds it debris as soon as the process dies.

        A full disk while the block runs becomes a one-line `RegistryError` saying that nothing was registered.
        """
        from registry import leases

        self.home.create()
        # The lease comes first and the folder is named after it, so `gpt2reg doctor` never
        # finds this folder without a live lease while the work goes on.
        lease = leases.take(self.home)
        try:
            folder = Path(tempfile.mkdtemp(prefix=f"{lease.id}-", dir=self.home.staging))
        except BaseException:
            lease.release()
            raise
        leases.cover(folder, lease)
        try:
            yield folder
        except Exception as error:
            if disk_full(error):
                # The recorder has already rolled back; say what happened in one line.
                raise RegistryError(
                    f"no space left on the disk of {self.home.path} while writing the new variant; nothing was "
                    "registered: free some space (or use --home on another disk) and run the command again"
                ) from error
            raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)
            leases.uncover(folder)
            lease.release()  # last: the folder is gone before its lease is

    def record(self, *, name: str, operation: str, parents: list, result: CapabilityResult, staging: Path,
               kind: str = "full", allow_nonfinite: bool = False) -> Variant:
        """Register `result` (its files in `staging`) as a new version of `name`."""
        check_finite_weights(result, allow_nonfinite)
        return self.open_recorder().record(name=name, operation=operation, parents=parents, result=result,
                                           staging=staging, kind=kind)


def check_finite_weights(result: CapabilityResult, allow_nonfinite: bool) -> None:
    """Refuse a new variant whose weight files hold NaN or infinite values, or, with `allow_nonfinite`,
    tag it ``warning: nonfinite-weights: ...`` (MLflow's ``gpt2reg.warning``, the lineage row's tags).

    Such a model loads and saves like any other but computes NaN; the core checks every variant it
    records, whichever command or plugin made it.
    """
    from backends import finite_weights

    if result.preset_dir is None:
        return
    found = finite_weights.describe(finite_weights.scan_folder(result.preset_dir))
    if not found:
        return
    if not allow_nonfinite:
        raise UsageError(f"{found}; a model with weights that are not finite computes NaN, so nothing was registered: "
                         "fix the weights (a clean checkpoint, a lower learning rate), or pass --allow-nonfinite "
                         "(SDK: allow_nonfinite=True) to register it anyway with a warning tag")
    result.tags["warning"] = f"nonfinite-weights: {found}"


def record_and_deliver(recorder: Recorder, *, name: str, operation: str, parents: list,
                       result: CapabilityResult, staging: Path, kind: str, allow_nonfinite: bool = False,
                       started: RunInProgress | None = None) -> Variant:
    """Record the result, once its weights are checked; copy it to `result.deliver_to` too, both or neither.
    `started`: the run of the work, which the variant's record ends."""
    check_finite_weights(result, allow_nonfinite)
    partial = (artifacts.stage_delivery(result.preset_dir, result.deliver_to, staging=staging)
               if result.deliver_to else None)
    try:
        new = recorder.record(name=name, operation=operation, parents=parents, result=result,
                              staging=staging, kind=kind, started=started)
        if partial is not None:
            # The recorder wrote the manifest after the copy was staged; the delivered copy
            # gets it with the variant's ref added, so importing it back can link to it.
            manifest = json.loads((Path(result.preset_dir) / MANIFEST).read_text(encoding="utf-8"))
            manifest.update(ref=new.ref, name=new.name, version=new.version)
            (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
            artifacts.publish_delivery(partial, result.deliver_to)
    except BaseException:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return new
