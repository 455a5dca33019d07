"""One config path for every stage: a dataclass of defaults, a YAML file, then command-line overrides.

Each stage module defines a small `@dataclass` config. `add_config_arguments` turns its fields into flags
(`batch_size` -> `--batch-size`; booleans get `--x/--no-x`) plus `--config FILE.yaml` and trailing
`key=value` pairs; `build_config` merges defaults < YAML < flags < key=value. Unknown keys are an error,
never silently ignored, and `save_config` writes the resolved config next to the outputs it produced.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from fair.errors import FairError

C = TypeVar("C")


def _field_type(cls: type, field: dataclasses.Field) -> type:
    hint = typing.get_type_hints(cls)[field.name]
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
        text = help.get(field.name, "")
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
    """Build the dataclass, coercing list values to tuples and naming the source of any bad value."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise FairError(f"{source}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        kind = _field_type(cls, fields[key])
        if kind is tuple and isinstance(value, list):
            values[key] = tuple(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            values[key] = float(value)
        elif value is not None and kind in (int, float, str, bool) and not isinstance(value, kind):
            raise FairError(f"{source}: setting {key!r} must be {kind.__name__}, got {value!r}")
    config = cls(**values)
    if hasattr(config, "validate"):
        config.validate()
    return config


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
