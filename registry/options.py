"""Typed options: the one declaration of what a capability takes.

A capability declares its options as a dataclass whose fields are made with
`option(...)`: each carries its help, flag name, choices and bounds beside its
type and default. From that one declaration come:

- the `gpt2reg NAME` command (`registry.commands`), for built-in and
  third-party capabilities alike;
- validation with one-line errors (`parse`), for the CLI and the SDK;
- the SDK call: `Registry.run(NAME, ref, **options)` takes the same names;
- the MLflow serving parameters of fields marked ``serve=True`` (`served_params`);
- the options table of the documentation (`markdown_table`).

Rules that tie several options together stay in the dataclass's
``__post_init__``, which raises `UsageError`.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Options:
    ...     sparsity: float = option(help="Fraction of the weights to zero.", above=0, below=1, required=True)
    ...     scope: str = option("per-matrix", help="Which weights compete.", choices=("per-matrix", "global"))
    >>> parse(Options, {"sparsity": 0.5}, "prune").scope
    'per-matrix'
    >>> parse(Options, {"sparsity": 2}, "prune")
    Traceback (most recent call last):
    registry.errors.UsageError: --sparsity must be in (0, 1) (got 2)
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from dataclasses import MISSING, dataclass
from typing import Any, Union

from registry.errors import UsageError

METADATA_KEY = "gpt2reg.option"


# The roles a data set plays in a run, as MLflow's `mlflow.data.context` tag names them.
DATASET_CONTEXTS = ("training", "validation", "evaluation")


@dataclass(frozen=True)
class OptionSpec:
    """What a field declares beyond its type and default (see `option`)."""

    help: str = ""
    flag: str | None = None
    choices: tuple | None = None
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    required: bool = False
    argument: bool = False
    cli: bool = True
    path: bool = False
    serve: bool = False
    serve_default: Any = None
    metavar: str | None = None
    dataset: str | None = None


def option(default: Any = MISSING, *, help: str, default_factory: Any = MISSING, flag: str | None = None,
           choices=None, at_least=None, above=None, at_most=None, below=None, required: bool = False,
           argument: bool = False, cli: bool = True, path: bool = False, serve: bool = False,
           serve_default: Any = None, metavar: str | None = None, dataset: str | None = None) -> Any:
    """A dataclass field that declares one option.

    - ``help``: one sentence for ``--help`` and the docs;
    - ``flag``: the command-line flag (default: ``--field-name``);
    - ``choices``: the values allowed; ``at_least``/``above``/``at_most``/``below``: bounds;
    - ``required``: the user must give it (a list: at least one item);
    - ``argument``: a positional command-line argument rather than a flag (a list: any number);
    - ``cli=False``: for Python callers only (a callback);
    - ``path``: names files or folders that must exist, checked before any model loads;
    - ``serve``: also a parameter of the served model (``serve_default`` where the default differs);
    - ``dataset``: with ``path``, the files are a data set in this role (``training``, ``validation`` or
      ``evaluation``): the core records them as the run's MLflow data set inputs and on the lineage edge.
    """
    if dataset is not None and (dataset not in DATASET_CONTEXTS or not path):
        raise ValueError(f"dataset={dataset!r}: use one of {', '.join(DATASET_CONTEXTS)}, with path=True")
    spec = OptionSpec(help=help, flag=flag, choices=tuple(choices) if choices is not None else None,
                      at_least=at_least, above=above, at_most=at_most, below=below, required=required,
                      argument=argument, cli=cli, path=path, serve=serve, serve_default=serve_default,
                      metavar=metavar, dataset=dataset)
    if default is MISSING and default_factory is MISSING:
        default = None  # "not given": `required` and __post_init__ decide what that means
    return dataclasses.field(default=default, default_factory=default_factory, metadata={METADATA_KEY: spec})


@dataclass(frozen=True)
class Declared:
    """One option as read from its dataclass field: name, type, default and spec."""

    name: str
    kind: type  # bool, int, float, str, list or object (anything else: Python callers only)
    item: type  # for a list: the type of its items
    optional: bool  # None is a value (the default means "not given")
    default: Any
    spec: OptionSpec

    @property
    def flag(self) -> str:
        return self.spec.flag or "--" + self.name.replace("_", "-")

    @property
    def shown(self) -> str:
        """How errors name the option: its flag, or for an argument its name in capitals."""
        return self.name.upper() if self.spec.argument else self.flag


def declared(options_class) -> list[Declared]:
    """The options of `options_class` in declaration order (fields without `option()` get an empty spec)."""
    hints = typing.get_type_hints(options_class)
    found = []
    for field in dataclasses.fields(options_class):
        spec = field.metadata.get(METADATA_KEY) or OptionSpec()
        kind, item, optional = _kind(hints.get(field.name, Any))
        if field.default is not MISSING:
            default = field.default
        elif field.default_factory is not MISSING:
            default = field.default_factory()
        else:
            default = MISSING
        found.append(Declared(field.name, kind, item, optional, default, spec))
    return found


def _kind(hint) -> tuple[type, type, bool]:
    args = typing.get_args(hint)
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        optional = type(None) in args
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            # A value of several shapes (a JSON object or its text): the command line gives text.
            return (str if str in rest else object), object, optional
        hint, args = rest[0], typing.get_args(rest[0])
    if hint in (bool, int, float, str):
        return hint, object, optional
    if typing.get_origin(hint) in (list, tuple) or hint in (list, tuple):
        item = args[0] if args and args[0] in (int, float, str) else str
        return list, item, optional
    return object, object, optional


# ---------------------------------------------------------------- validation


def parse(options_class, values: dict[str, Any], capability: str):
    """`values` checked against the declaration and made into an `options_class` instance.

    Unknown names, wrong types, values outside the choices or bounds and missing required
    options raise `UsageError` with one line naming the flag; then the class's own
    ``__post_init__`` checks the rules that tie options together.
    """
    options = {item.name: item for item in declared(options_class)}
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise UsageError(f"{capability} has no option {', '.join(unknown)}; "
                         f"its options are: {', '.join(sorted(options)) or 'none'}")
    checked = {}
    for name, value in values.items():
        checked[name] = check_value(options[name], value)
    for item in options.values():
        if item.spec.required and _empty(checked.get(item.name, item.default)):
            raise UsageError(f"{capability} needs {item.shown}" + (f": {item.spec.help}" if item.spec.help else ""))
    try:
        return options_class(**checked)
    except TypeError as error:  # a field without a default that was not given
        raise UsageError(f"{capability}: {error}") from None


def _empty(value) -> bool:
    return value is None or value is MISSING or (isinstance(value, (list, tuple)) and not value)


def check_value(item: Declared, value):
    """One value converted to its declared type (a str for a list becomes a list of one) and checked."""
    if value is None:
        if item.optional or item.default is None:
            return None
        raise UsageError(f"{item.shown} needs a value")
    if item.kind is object:
        return value
    if item.kind is list:
        if isinstance(value, str) and item.item is str:
            value = [value]  # one path or one stop text: a list of one
        elif isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise UsageError(f"{item.shown} must be a list of {_NAMES[item.item]}s (got {_short(value)})")
        return [_check_scalar(item, element, item.item) for element in value]
    return _check_scalar(item, value, item.kind)


_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


def _check_scalar(item: Declared, value, kind: type):
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise UsageError(f"{item.shown} must be {_NAMES.get(kind, kind.__name__)} (got {_short(value)})")
    given = value
    if kind in (int, float):
        value = kind(value)
        if kind is float and not math.isfinite(value):
            raise UsageError(f"{item.shown} must be a finite number (got {value})")
    spec = item.spec
    if spec.choices is not None and value not in spec.choices:
        raise UsageError(f"unknown {item.shown} {value!r}; choose one of: {', '.join(map(str, spec.choices))}")
    bound = bound_problem(spec, value)
    if bound:
        raise UsageError(f"{item.shown} must be {bound} (got {given})")
    return value


def _short(value) -> str:
    """A value as an error line shows it: its repr, cut, on one line."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(spec: OptionSpec) -> tuple[tuple | None, tuple | None]:
    """The lower and upper bound as (value, bracket): "[" or "]" includes the value, "(" or ")" does not."""
    low = (spec.at_least, "[") if spec.at_least is not None else (spec.above, "(") if spec.above is not None else None
    high = (spec.at_most, "]") if spec.at_most is not None else (spec.below, ")") if spec.below is not None else None
    return low, high


def bound_problem(spec: OptionSpec, value) -> str | None:
    """The bounds `value` breaks, in words ("at least 1", "in [0, 1)"), or None."""
    low, high = _bounds(spec)
    inside = ((low is None or (value >= low[0] if low[1] == "[" else value > low[0]))
              and (high is None or (value <= high[0] if high[1] == "]" else value < high[0])))
    return None if inside else bounds_text(spec)


def bounds_text(spec: OptionSpec) -> str | None:
    """The bounds in words: "at least 1", "greater than 0", "in [0, 1)"; None when unbounded."""
    low, high = _bounds(spec)
    if low and high:
        return f"in {low[1]}{low[0]:g}, {high[0]:g}{high[1]}"
    if low:
        return f"at least {low[0]:g}" if low[1] == "[" else f"greater than {low[0]:g}"
    if high:
        return f"at most {high[0]:g}" if high[1] == "]" else f"below {high[0]:g}"
    return None


def as_dict(options) -> dict[str, Any]:
    """The options' values by name (not `dataclasses.asdict`: it deep-copies, and an option may be a callback)."""
    return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}


# ---------------------------------------------------------------- serving and docs

_MLFLOW_TYPES = {bool: "boolean", int: "long", float: "double", str: "string", list: "string"}


def served_params(options_class) -> dict[str, tuple[str, Any]]:
    """name -> (MLflow param type, default) for the fields marked ``serve=True``.

    A list is served as one string (a served `stop` is one text); an option whose
    default is None is served with its ``serve_default`` (MLflow params need a value).
    """
    params = {}
    for item in declared(options_class):
        if not item.spec.serve:
            continue
        default = item.spec.serve_default if item.spec.serve_default is not None else item.default
        if isinstance(default, list):
            default = default[0] if default else ""
        params[item.name] = (_MLFLOW_TYPES[item.kind], default)
    return params


def markdown_table(options_class) -> str:
    """The options as a Markdown table (flag, type, default, meaning), for the documentation."""
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for item in declared(options_class):
        if not item.spec.cli:
            continue
        name = item.name.upper() if item.spec.argument else item.flag
        if item.kind is bool and item.default is not False:
            name += f"/--no-{name[2:]}"  # a default of True or None can be set either way
        if item.kind is bool:
            kind = "flag"
        elif item.spec.choices:
            kind = " \\| ".join(map(str, item.spec.choices))
        elif item.kind is list:
            kind = f"{_TYPE_WORDS[item.item]}, repeatable"
        else:
            kind = _TYPE_WORDS.get(item.kind, "text")
        bounds = bounds_text(item.spec)
        if bounds:
            kind += f", {bounds}"
        if item.spec.required:
            default = "required"
        elif item.default in (None, [], MISSING) or item.kind is bool and item.default is False:
            default = "-"
        else:
            default = f"`{item.default}`"
        meaning = item.spec.help.replace("|", "\\|")
        rows.append(f"| `{name}` | {kind} | {default} | {meaning} |")
    return "\n".join(rows)


_TYPE_WORDS = {int: "integer", float: "number", str: "text", bool: "flag", object: "text"}
