"""One config path for every stage: a dataclass of defaults, a YAML file, then command-line overrides.

Each stage module defines a small `@dataclass` config. `add_config_arguments` turns its fields into flags
(`batch_size` -> `--batch-size`; booleans get `--x/--no-x`) plus `--config FILE.yaml` and trailing
`key=value` pairs; `build_config` merges defaults < YAML < flags < key=value. Unknown keys are an error,
never silently ignored, and `save_config` writes the resolved config next to the outputs it produced.

Every config class derives from `Validated`: its fields' types and choices, then its own `validate()`, are
checked in `__post_init__`, so a config built in code or by `dataclasses.replace` is held to the same rules as
one from the command line (a pipeline that builds its stages' configs cannot pass them a bad value).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

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


def _field_type(cls: type, field: dataclasses.Field) -> type:
    hint = _hints(cls)[field.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))  # `int | None` parses as int
    if typing.get_origin(hint) is typing.Literal:
        return str
    return typing.get_origin(hint) or hint


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, help: dict[str, str] | None = None) -> None:
    help = help or {}
    parser.add_argument("--config", metavar="FILE", help="YAML file of settings (flags and key=value override it)")
    for field in dataclasses.fields(cls):
        flag = "--" + field.name.replace("_", "-")
        kind = _field_type(cls, field)
        text = help.get(field.name) or field.metadata.get("help", "")  # a field may carry its own (fair/dtype.py)
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind in (list, tuple):
            item = typing.get_args(typing.get_type_hints(cls)[field.name])[:1] or (str,)
            parser.add_argument(flag, dest=field.name, nargs="+", type=item[0], default=None, help=text)
        else:
            parser.add_argument(flag, dest=field.name, type=kind, default=None, help=text)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides, e.g. batch_size=8")


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
    try:
        return cls(**values)
    except FairError as e:
        raise FairError(f"{source}: {e}") from None


def load_yaml(path: str | Path, known: set[str]) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise FairError(f"config file {path} not found") from None
    except yaml.YAMLError as e:
        raise FairError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise FairError(f"config file {path}: expected a mapping of settings")
    unknown = sorted(set(data) - known)
    if unknown:
        raise FairError(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def save_config(config: Any, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))
