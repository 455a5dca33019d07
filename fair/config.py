"""One config path for every stage: a dataclass of defaults, a YAML file, then command-line overrides.

Each stage module defines a small `@dataclass` config. `add_config_arguments` turns its fields into flags
(`batch_size` -> `--batch-size`; booleans get `--x/--no-x`) plus `--config FILE.yaml` and trailing
`key=value` pairs; `build_config` merges defaults < YAML < flags < key=value. Unknown keys are an error,
never silently ignored, and `save_config` writes the resolved config next to the outputs it produced.

Every config class derives from `Validated`: its fields' types and choices, then its own `validate()`, are
checked in `__post_init__`, so a config built in code or by `dataclasses.replace` is held to the same rules as
one from the command line (a pipeline that builds its stages' configs cannot pass them a bad value).

A setting is documented once, by the comment beside its field, and every `--help` line is made from it:

    limit: int | None = None  # first N examples of the split; None for all
    engine: EngineName = "auto"  # auto = vLLM on a GPU where installed, else transformers

gives `--engine ENGINE  auto = vLLM on a GPU where installed, else transformers (choices: auto, hf, vllm;
default: auto)`: the choices come from the `Literal` type, the default from the dataclass, so neither is typed
twice. The comment is read from the class's source once per class (`field_docs`). A field that many configs
share, made by one helper, carries its text in `metadata["help"]`, which is shown instead, the same in every
command (fair/dtype.py's `dtype_field`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import functools
import inspect
import io
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import yaml

from fair.errors import FairError

C = TypeVar("C")

# The code runs from a checkout (an editable install), so the repository's own folders are found from here.
REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"


class Validated:
    """Base of the config dataclasses: every construction checks the fields, then the class's own rules."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            hint = _hints(type(self))[field.name]
            # object.__setattr__: frozen configs (Teacher) are coerced too, once, before anyone sees them
            object.__setattr__(self, field.name, _conform(field.name, getattr(self, field.name), hint))
        self.validate()

    def validate(self) -> None:
        """Ranges and combinations; the fields' types are checked before this runs."""


def at_least(config: Any, minimum: int, *names: str) -> None:
    """The one-line error for a count below its minimum; a None (unset, e.g. no limit) passes."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise FairError(f"{name} must be at least {minimum}, got {value}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _conform(name: str, value: Any, hint: Any) -> Any:
    """`value` as `hint` wants it (a list becomes a tuple, an int a float), or a FairError naming the setting."""
    try:
        return _coerce(value, hint)
    except TypeError:
        if typing.get_origin(hint) is typing.Literal:
            choices = ", ".join(repr(c) for c in typing.get_args(hint))
            raise FairError(f"unknown {name} {value!r} (choose from {choices})") from None
        raise FairError(f"{name} must be {_describe(hint)}, got {value!r}") from None


def _coerce(value: Any, hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or origin is types.UnionType:
        for arg in args:
            with contextlib.suppress(TypeError):
                return _coerce(value, arg)
        raise TypeError
    if origin is typing.Literal:
        if any(value == c and type(value) is type(c) for c in args):
            return value
        raise TypeError
    if hint is type(None) or hint is Any:
        if hint is Any or value is None:
            return value
        raise TypeError
    if hint is tuple or origin is tuple:
        if not isinstance(value, list | tuple):
            raise TypeError
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if args and len(args) != len(value):
            raise TypeError
        return tuple(_coerce(v, a) for v, a in zip(value, args, strict=True)) if args else tuple(value)
    kind = origin or hint
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise TypeError
    return value


def _describe(hint: Any) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(args[0])}" if args[-1] is Ellipsis else f"a list of {len(args)} {_describe(args[0])}"
    return "None" if hint is type(None) else getattr(typing.get_origin(hint) or hint, "__name__", str(hint))


def _field_hint(cls: type, field: dataclasses.Field) -> Any:
    hint = _hints(cls)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))  # `int | None` parses as int
    return hint


def _field_type(cls: type, field: dataclasses.Field) -> type:
    hint = _field_hint(cls, field)
    if typing.get_origin(hint) is typing.Literal:
        return str
    return typing.get_origin(hint) or hint


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error: the usage of a command with 30 flags would bury it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} -h` lists the settings)\n")


def config_parser(cls: type, prog: str, doc: str | None, positional: tuple[str, ...] = ()) -> Parser:
    """The whole command line of a module run on its own (`python -m cli.demo`): `doc` above `cls`'s flags."""
    parser = Parser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls, positional)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, positional: tuple[str, ...] = ()) -> None:
    """A flag per field of `cls` (the `positional` fields as arguments instead), each with its help: the field's
    comment, its choices and its default (`option_help`). `parser.get_default("settings")` is `cls` then."""
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (flags and key=value override it)")
    for field in dataclasses.fields(cls):
        names = [field.name] if field.name in positional else ["--" + field.name.replace("_", "-")]
        dest = {} if field.name in positional else {"dest": field.name}
        kind = _field_type(cls, field)
        # "%" escaped: argparse %-formats help texts; None defaults: a flag not given leaves the YAML's value
        common: dict[str, Any] = {"default": None, "help": option_help(cls, field).replace("%", "%%")} | dest
        if field.name in positional:
            common["nargs"] = "?"  # may come from the YAML instead; make_config names it when missing
        if kind is bool:
            parser.add_argument(*names, action=argparse.BooleanOptionalAction, **common)
        elif kind is dict:  # a mapping on the command line in YAML's flow style: --x '{a: 1, b: 2}'
            parser.add_argument(*names, type=yaml.safe_load, metavar="YAML", **common)
        elif kind in (list, tuple):
            items = typing.get_args(_field_hint(cls, field)) or (str, Ellipsis)
            count = "+" if items[-1] is Ellipsis else len(items)  # tuple[float, float]: exactly two
            # a list of any length also adds up over repeats: --report-to tensorboard --report-to wandb
            extend = {"action": "extend"} if count == "+" else {}
            parser.add_argument(*names, nargs=count, type=items[0], **extend, **common)
        else:
            parser.add_argument(*names, type=kind, **common)  # choices checked by the class: one message
    example = next((f for f in dataclasses.fields(cls)
                    if field_default(f) not in (None, MISSING) and not isinstance(field_default(f), tuple)), None)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more settings, as in the YAML" + (
        f", e.g. {example.name}={format_value(field_default(example))}".replace("%", "%%") if example else ""))
    parser.set_defaults(settings=cls)


def option_help(cls: type, field: dataclasses.Field) -> str:
    """One line: what the field is (the comment beside it, `field_docs`), its choices, its default."""
    text = field_doc(cls, field)  # tests/test_help.py: never empty
    notes = []
    if choices := _choices(_hints(cls)[field.name]):
        notes.append("choices: " + ", ".join(format_value(c) for c in choices))
    default = field_default(field)
    if default is MISSING:
        notes.append("required")
    elif default is not None:  # None is "not set": the comment says what happens then
        notes.append(f"default: {format_value(default)}")
    return f"{text} ({'; '.join(notes)})" if notes else text


def field_doc(cls: type, field: dataclasses.Field) -> str:
    """What the field is, in words: a shared field's own text first, one help for every config that has it
    (fair/dtype.py's `dtype_field`), else the comment beside it. A class that copies another's field keeps it
    documented by copying this into the copy's `metadata["help"]`."""
    return field.metadata.get("help") or field_docs(cls).get(field.name, "")


def field_default(field: dataclasses.Field) -> Any:
    if field.default_factory is not MISSING:
        return field.default_factory()
    return field.default


def format_value(value: Any) -> str:
    """A value as the user types it: YAML's true/false, a list's items space-separated (as its flag takes them)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list | tuple):
        return " ".join(format_value(v) for v in value) or "[]"
    return '""' if value == "" else str(value)


def _choices(hint: Any) -> tuple[Any, ...]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(c for arg in typing.get_args(hint) for c in _choices(arg))
    return typing.get_args(hint) if typing.get_origin(hint) is typing.Literal else ()


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation, typed once: the comment on its declaration's lines in the class's source
    (`task: str = "svamp"  # the benchmark`). A base class's fields keep their own comments; comment-only lines
    between fields (section headers) belong to no field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_comments_of_fields(klass))
    return docs


def _comments_of_fields(klass: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(klass))
    except (OSError, TypeError):  # defined where no source is kept (an interactive session): no help text
        return {}
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            # a linter's pragma (noqa, type:, pragma) after the text is for the linter, not the reader
            comments[token.start[0]] = re.sub(r"#\s*(noqa|type:|pragma)\b.*", "", token.string.lstrip("#")).strip()
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    return {
        node.target.id: " ".join(comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments)
        for node in body.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    }


def build_config(cls: type[C], args: argparse.Namespace) -> C:
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if args.config:
        values.update(load_yaml(args.config, names))
    values.update({n: getattr(args, n) for n in names if getattr(args, n, None) is not None})
    for item in args.overrides:
        key, sep, raw = item.partition("=")
        key = key.replace("-", "_")
        if not sep or key not in names:
            raise FairError(f"bad override {item!r}: expected key=value with key one of {', '.join(sorted(names))}")
        values[key] = yaml.safe_load(raw)
    return make_config(cls, values, source=f"{args.config} or the command line" if args.config else "command line")


def make_config(cls: type[C], values: dict[str, Any], source: str) -> C:
    """Build the dataclass (which checks itself: `Validated`), naming the source of any bad value."""
    known = {f.name for f in dataclasses.fields(cls)}
    for key in values:
        if key not in known:
            raise FairError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(known))})")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in values and field_default(f) is MISSING]
    if missing:
        raise FairError(f"{source}: missing setting(s) {', '.join(missing)} (no default)")
    try:
        return cls(**values)
    except FairError as e:
        raise FairError(f"{source}: {e}") from None


def read_yaml_mapping(path: str | Path, what: str, shown: str | Path | None = None) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file is an empty one); one line naming the file (as
    `shown`, else `path`) when it is missing, not YAML or not a mapping. `what` names the file's kind."""
    shown = path if shown is None else shown
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise FairError(f"{what} {shown} not found") from None
    except yaml.YAMLError as e:
        raise FairError(f"{what} {shown} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FairError(f"{what} {shown}: expected a mapping of settings")
    return data


def load_yaml(path: str | Path, known: set[str]) -> dict[str, Any]:
    data = read_yaml_mapping(path, "config file")
    unknown = sorted(set(data) - known)
    if unknown:
        raise FairError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def save_config(config: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))
