"""The capability contract: options in, artifacts and metrics out.

A capability never writes to MLflow or the lineage store: it returns a
`CapabilityResult`, and the core records it (see `registry.recorder`).

Example:
    >>> from dataclasses import dataclass
    >>> from registry import Capability, CapabilityResult, option
    >>> class CountTokens(Capability):
    ...     name = "count-tokens"
    ...     needs_model = False
    ...     @dataclass
    ...     class Options:
    ...         text: str = option(help="The text to count.", argument=True, required=True)
    ...     def run(self, context, options):
    ...         from backends.tokenizer import encode
    ...         return CapabilityResult(output={"tokens": len(encode(options.text))})
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from registry.errors import RegistryError, UsageError, one_line


@dataclass
class CapabilityResult:
    """What a capability hands back to the core.

    - ``preset_dir``: folder of the new variant (a KerasHub preset), for
      capabilities that make one; the core hashes, logs and registers it.
    - ``metrics``: figures about the result (for a new variant: its own).
    - ``parent_metrics``: the same figures measured on the parent in the same
      conditions; the core stores ``metrics - parent_metrics`` on the edge.
    - ``history``: metric name -> [(step, value)], logged as MLflow curves.
    - ``settings``: what the operation did, kept on the lineage edge.
    - ``output``: JSON-ready data for the caller (generated text, ids, ...).
    - ``discard_after_record``: folders (training checkpoints) to remove once
      the variant is committed, and only then.
    - ``deliver_to``: a folder outside the home the user asked for (an export's
      ``--out``); once the variant is committed the core copies ``preset_dir``
      there, whole or not at all.
    - ``tables``: per-example results (an evaluation's predictions), logged
      as MLflow table artifacts under the given file names.
    - ``other_parents``: variants besides the one the capability ran on that
      the result comes from, as ``(variant, role)`` (a distilled student's
      initialisation); each gets a lineage edge.
    - ``datasets``: filled by the core, not the capability: the data sets its
      options named (`registry.datasets`), recorded with what it made.
    """

    preset_dir: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    parent_metrics: dict[str, float] = field(default_factory=dict)
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    output: dict[str, Any] = field(default_factory=dict)
    discard_after_record: list[Path] = field(default_factory=list)  # folders the core removes once recorded
    tags: dict[str, str] = field(default_factory=dict)  # searchable facts about the new variant (its quantization)
    datasets: list = field(default_factory=list)  # `registry.datasets.DataSetUse`s, filled by the core
    deliver_to: Path | None = None
    other_parents: list[tuple[Any, str]] = field(default_factory=list)  # (Variant, role) besides the parent
    tables: dict[str, list[dict]] = field(default_factory=dict)  # artifact file -> rows, logged as MLflow tables


Progress = Callable[..., None]

# The prompts every new variant continues, so that its run shows what it writes beside its figures,
# and variants of one family can be read side by side: code, prose and a story opening.
SAMPLE_PROMPTS = ("The meaning of life is", "def fibonacci(n):", "Once upon a time,")
SAMPLE_NEW_TOKENS = 16
SAMPLES_TABLE = "samples.json"


def sample_generations(lm, prompts: tuple[str, ...] = SAMPLE_PROMPTS,
                       max_new_tokens: int = SAMPLE_NEW_TOKENS) -> dict[str, list[dict]]:
    """Greedy continuations of a few fixed prompts by a model in memory, as a table for
    `CapabilityResult.tables` (the core logs it with the new variant's run).

    Decoded with the Keras runtime without XLA, so that nothing is built or compiled
    beyond two small functions. Measured on 2 CPU cores: 0.8 to 1.0 s per variant of
    the `tiny` model (2 to 3 s for the first generation of a process, while TensorFlow
    warms up), 7 to 8 s for the 124M `gpt2`.

    Example:
        >>> result = CapabilityResult(preset_dir=preset, tables=sample_generations(lm))
        >>> result.tables["samples.json"][0]["prompt"]
        'The meaning of life is'
    """
    from backends import generation
    from backends.tokenizer import encode_batch

    prompt_ids = encode_batch(list(prompts))
    room = lm.backbone.max_sequence_length - max(len(ids) for ids in prompt_ids)
    if room < 1:
        return {}  # a context too short for the prompts: no samples rather than a failed variant
    outputs = generation.generate(lm, prompt_ids, sampler="greedy", max_new_tokens=min(max_new_tokens, room),
                                  runtime="keras", xla=False)
    return {SAMPLES_TABLE: [
        {"prompt": prompt, "text": output.text, "new_tokens": len(output.token_ids),
         "finish_reason": output.finish_reason}
        for prompt, output in zip(prompts, outputs)
    ]}


@dataclass
class RunContext:
    """What the core gives a capability: the parent variant, a work folder, helpers.

    Made by the core (`registry.pipeline`) with keyword arguments; by hand, for example:
    ``RunContext(variant=reg.get("base"), workdir=folder, variants=reg, home=reg.home,
    hook=registry.plugins.load_plugins().hook)``.
    """

    variant: Any  # registry.variant.Variant or None
    workdir: Path
    progress: Progress = lambda **fields: None
    device: str = "auto"
    checkpoints: Path | None = None  # the home's checkpoint folder, for resumable work
    # The plugin manager's hook relay (`registry.plugins.load_plugins().hook`), passed by the core:
    # the contract a plugin implements sits below the manager that loads plugins, so it does not import it.
    hook: Any = None
    # The registry the run reads variants from: its `get`, `load`, `preset_path` and `lineage_graph`
    # (the SDK's `Registry` is one). Passed by the core for the same reason as `hook`: the SDK sits above this module.
    variants: Any = None
    home: Any = None  # the registry's `registry.home.Home`: where its stores and work folders are
    # Where `log_step` sends its figures: the core's run of the work (`registry.recorder.RunInProgress`).
    step_sink: Callable[..., None] | None = None

    def log_step(self, step: int, **values: float | None) -> None:
        """Figures at one step of long work (``train_loss=..., learning_rate=...``), streamed by the core
        into the work's MLflow run as it goes, so that the UI shows the curves while it trains. The
        capability still returns its whole curves in `CapabilityResult.history`; the core logs each point once."""
        if self.step_sink is not None:
            self.step_sink(step, **values)

    def _reader(self):
        if self.variants is None:
            raise RegistryError("this RunContext was made without the registry it reads variants from: "
                                "pass variants=Registry(...)")
        return self.variants

    def load_model(self, dtype: str | None = None):
        """The parent variant as a KerasHub ``GPT2CausalLM`` (``dtype``: a Keras dtype policy)."""
        if self.variant is None:
            raise UsageError("this capability needs a model reference")
        return self._reader().load(self.variant, dtype=dtype)

    def resolve(self, reference: str):
        """Another variant of the same registry (`NAME`, `NAME/V`, `NAME@alias`)."""
        return self._reader().get(reference)

    def load_variant(self, variant, dtype: str | None = None):
        """Another variant as a KerasHub ``GPT2CausalLM``."""
        return self._reader().load(variant, dtype=dtype)

    def lineage(self):
        """The parent variant's family as a `registry.lineage_graph.LineageGraph`: the variant and its
        ancestors, with each edge's settings and metric deltas (read from the registry, never written)."""
        if self.variant is None:
            raise UsageError("this capability needs a model reference")
        return self._reader().lineage_graph(self.variant, descendants=False)

    def parent_preset(self) -> Path:
        """The parent variant's KerasHub preset folder, checked against its recorded hash."""
        from registry.variant_files import checked

        return checked(self.variant, self._reader().preset_path(self.variant))

    def load_parent_model(self):
        """The variant's own parent (an adapter's base) as a plain ``GPT2CausalLM``."""
        if self.variant is None or self.variant.parent is None:
            raise UsageError("this capability needs a variant with a parent")
        return self._reader().load(self.variant.parent)

    @contextmanager
    def decoding(self, runtime: str = "auto", xla: bool | None = None) -> Iterator[Any]:
        """The parent variant's decoder (a `backends.decoder.Decoder`) for the block.

        On the CPU (device ``auto`` or ``cpu``), a float32 or int8 variant, or an adapter over one,
        decodes through onnxruntime from its files, without TensorFlow; any other (or
        ``runtime="keras"``, an `xla` setting, another device) through its KerasHub model, inside
        the device's strategy. Either stays loaded in this process.
        """
        if self.variant is None:
            raise UsageError("this capability needs a model reference")
        reader = self._reader()
        decoder = reader.light_decoder(self.variant, runtime=runtime, xla=xla) if self._on_cpu else None
        if decoder is not None:
            yield decoder
            return
        with self.strategy().scope():
            yield reader.keras_decoder(self.variant, runtime=runtime, xla=xla, device=self.device)

    def light_scorer(self):
        """A perplexity scorer of the parent variant through onnxruntime, without TensorFlow (a
        `backends.perplexity.RuntimeScorer`), on the CPU devices; None when it needs Keras."""
        if self.variant is None:
            raise UsageError("this capability needs a model reference")
        return self._reader().light_scorer(self.variant) if self._on_cpu else None

    @property
    def _on_cpu(self) -> bool:
        # onnxruntime runs on the CPU here: a GPU, a cluster or a TPU is a tf.distribute device.
        return self.device in ("auto", "cpu")

    def strategy(self):
        """The ``tf.distribute`` strategy the ``select_strategy`` hook picks for ``device``."""
        if self.hook is None:
            raise RegistryError("this RunContext was made without the plugins' hooks, which pick a device strategy: "
                                "pass hook=registry.plugins.load_plugins().hook")
        strategy = self.hook.select_strategy(device=self.device)
        if strategy is None:
            raise UsageError(f"no plugin provides device {self.device!r}; use auto, cpu, gpu, multi-gpu, multiworker or tpu")
        return strategy


class Capability(ABC):
    """Base class of every capability (built-in or third-party).

    Subclasses set ``name``, declare their options as a dataclass named
    ``Options`` whose fields are made with `registry.options.option` (help,
    flag, choices and bounds beside the type and default; ``__post_init__``
    checks rules that tie options together and raises ``UsageError``), and
    implement ``run(context, options)``. The `gpt2reg NAME` command, the SDK
    call, validation and the documentation's options table all come from that
    one declaration (`registry.options`, `registry.commands`).
    """

    name: ClassVar[str]
    operation: ClassVar[str | None] = None  # lineage operation when it makes a variant
    variant_kind: ClassVar[str] = "full"  # "full" (a whole model) or "adapter" (weights over a base)
    parent_role: ClassVar[str] = "parent"  # the role of the variant it runs on, in the lineage ("teacher")
    needs_model: ClassVar[bool] = True
    # What the command calls the variant it runs on (`gpt2reg merge ADAPTER_REF`).
    reference: ClassVar[str] = "ref"
    uses_device: ClassVar[bool] = False  # takes --device (a tf.distribute strategy)
    # The option that takes a callback for text as it is produced: the command gets --stream.
    stream_option: ClassVar[str | None] = None
    # How the core may keep a result that is not a variant, when asked (--log): "metrics" attaches
    # the figures to the variant it ran on, "run" logs settings and outputs as an MLflow run of their own.
    records: ClassVar[str | None] = None
    records_by_default: ClassVar[bool] = False

    @dataclass
    class Options:
        pass

    @classmethod
    def validate(cls, options: "dict[str, Any] | Any") -> Any:
        """The options as a checked ``Options`` instance: unknown names and bad values raise UsageError.

        An ``Options`` instance is taken as it is (its ``__post_init__`` has already run).
        """
        from registry.options import parse

        if isinstance(options, cls.Options):
            return options
        return parse(cls.Options, dict(options), cls.name)

    @property
    def makes_variant(self) -> bool:
        return self.operation is not None

    @abstractmethod
    def run(self, context: RunContext, options) -> CapabilityResult:
        """Do the work with the checked ``options``; return artifacts and metrics, never write to the stores."""

    # What the command prints; the JSON document and the human lines are the capability's to shape.

    def document(self, outcome: "Outcome") -> dict[str, Any]:
        """The `--json` document: the new variant as `show --json` prints it, or the result's output."""
        if outcome.variant is not None:
            return outcome.variant.to_dict()
        if outcome.subject is not None and self.records == "metrics":
            return {"ref": outcome.subject.ref, **outcome.result.output}
        return dict(outcome.result.output)

    def report(self, outcome: "Outcome") -> list[str]:
        """Lines printed under the new variant's table (none by default) or, for a result, instead of JSON."""
        return []

    def notes(self, outcome: "Outcome") -> list[str]:
        """Lines for the terminal's error stream in human mode (what was cut, where it was logged)."""
        return []


@dataclass
class Outcome:
    """What a command received from the core, for `Capability.document` and `report`."""

    options: Any
    result: CapabilityResult | None = None  # None when a variant was registered from it
    variant: Any = None  # the new Variant, when one was registered
    subject: Any = None  # the Variant it ran on (read again after its figures were recorded)
    run_id: str | None = None  # the MLflow run a result was logged as
    streamed: bool = False  # the text was printed as it came


class CapabilityFailed(RegistryError):
    """A capability's own code raised an unexpected error: the message names the plugin and the error.

    The original exception is ``__cause__``. Deliberate errors (`UsageError`,
    `RunFailed`, any `RegistryError`) pass through unchanged: their message is
    already meant for the user.
    """

    def __init__(self, plugin: str | None, capability: str, error: BaseException):
        who = f"plugin {plugin!r} failed in capability {capability!r}" if plugin else f"capability {capability!r} failed"
        super().__init__(f"{who}: {one_line(error)}")
        self.plugin = plugin
        self.capability = capability
        self.result = None  # nothing measured worth keeping, unlike a RunFailed


@contextmanager
def plugin_code(plugin: str | None, capability: str) -> Iterator[None]:
    """Run a capability's own code (its construction, options, `run`): an unexpected error becomes
    `CapabilityFailed`, so the user learns which plugin to blame."""
    try:
        yield
    except RegistryError:
        raise
    except Exception as error:
        raise CapabilityFailed(plugin, capability, error) from error


def check_result(capability: Capability, result: Any) -> CapabilityResult:
    """What `run` returned, checked before the core records it (a wrong value is the plugin's fault)."""
    if not isinstance(result, CapabilityResult):
        raise TypeError(f"run returned {type(result).__name__}, not a CapabilityResult")
    if capability.makes_variant and (result.preset_dir is None or not Path(result.preset_dir).is_dir()):
        raise TypeError(f"run returned no folder for the new variant (preset_dir={result.preset_dir!r})")
    return result
