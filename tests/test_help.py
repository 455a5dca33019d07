"""Every option of every `fair` command explains itself: a help line naming its choices and its default.

The commands are found by walking cli/main.py's parser, not listed here, so a new command or option is held to
the same rule the day it is added. A settings class's choices and defaults are read from the dataclass itself
(its `Literal` types, its field defaults), so the test fails if the help line and the class disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

import pytest

from cli.main import build_parser, main
from fair.config import Validated, config_parser, field_default, field_doc, field_docs, format_value


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every leaf command, `teachers serve` included; each parser built as its command
    would build it (`train` adds its flags only when it is the command)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if not path:
                    sub = next(p for a in build_parser(name)._actions
                               if isinstance(a, argparse._SubParsersAction) for n, p in a.choices.items() if n == name)
                yield from subcommands(sub, (*path, name))
            return
    yield path, parser


COMMANDS = dict(subcommands(build_parser()))


def literal_choices(hint) -> tuple:
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    return tuple(c for arg in typing.get_args(hint) for c in literal_choices(arg))


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path in COMMANDS}
    assert {"mine", "committee", "serve", "teachers serve", "train", "grade", "report", "import-mistakes"} <= names
    assert COMMANDS[("train",)].get_default("settings").__name__ == "TrainConfig"


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_has_a_help_line_with_its_choices_and_default(path):
    parser = COMMANDS[path]
    settings = parser.get_default("settings")
    fields = {f.name: f for f in dataclasses.fields(settings)} if settings else {}
    hints = typing.get_type_hints(settings) if settings else {}
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        text = action.help or ""
        assert text.strip() and text != argparse.SUPPRESS, f"fair {' '.join(path)} {name}: no help"
        if action.dest in fields:
            field = fields[action.dest]
            for choice in literal_choices(hints[field.name]):
                assert format_value(choice) in text, f"{name}: choice {choice!r} not named in {text!r}"
            default = field_default(field)
            if default is dataclasses.MISSING:
                assert "required" in text, f"{name}: {text!r}"
            elif default is not None:
                assert f"default: {format_value(default)}" in text.replace("%%", "%"), f"{name}: {text!r}"
        elif action.default not in (None, False, argparse.SUPPRESS):
            assert str(action.default) in text, f"{name}: default {action.default!r} not named in {text!r}"


def test_every_settings_class_documents_every_field():
    """Beyond the commands: the settings of a driver (`python -m cli.demo`) or of a YAML only (a committee's
    Teacher) are documented the same way."""
    import cli.demo  # noqa: F401  (DemoConfig, and ExperimentConfig through it)
    import gen.teachers.config  # noqa: F401  (Teacher)

    for cls in all_subclasses(Validated):
        missing = [f.name for f in dataclasses.fields(cls) if not field_doc(cls, f)]
        assert not missing, f"{cls.__module__}.{cls.__name__}: no comment on {missing}"


def all_subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *all_subclasses(sub))]


def test_mine_help_shows_the_engines_and_the_default(capsys):
    with pytest.raises(SystemExit) as done:
        main(["mine", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert "(choices: auto, hf, vllm; default: auto)" in " ".join(out.split())


def test_a_field_comment_becomes_the_help_and_percent_signs_survive_argparse(capsys):
    @dataclasses.dataclass
    class Example(Validated):
        rate: float = 0.5  # the share sent, in % of the requests
        mode: typing.Literal["a", "b"] = "a"  # how:
        # a section header, between fields: nobody's help
        count: int | None = None  # how many; None for all  # noqa: E501
        name: str = dataclasses.field(default="x", metadata={"help": "a shared field's own text"})

    assert field_docs(Example) == {"rate": "the share sent, in % of the requests", "mode": "how:",
                                   "count": "how many; None for all", "name": ""}
    with pytest.raises(SystemExit):
        config_parser(Example, "example", None).parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "the share sent, in % of the requests (default: 0.5)" in out
    assert "how: (choices: a, b; default: a)" in out
    assert "how many; None for all" in out and "a shared field's own text (default: x)" in out
