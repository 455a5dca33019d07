"""`make demo`'s recipe: the committee's default gold check, or the paper's peer review on `--filter review`.

The demo itself takes minutes (docs/benchmarks.md has its runs); here its committee stage is stopped as it
starts, to read the settings the demo gave it."""

from __future__ import annotations

import pytest

import cli.demo
from fair.recipes import DEFAULT_FILTER


class CommitteeReached(Exception):
    pass


@pytest.fixture
def committee_settings(monkeypatch):
    seen = []

    def generate(config):
        seen.append(config)
        raise CommitteeReached

    monkeypatch.setattr(cli.demo, "smollm2_dir", lambda: None)  # no model conversion: the stage before
    monkeypatch.setattr(cli.demo, "generate", generate)
    return seen


@pytest.mark.parametrize(("flags", "expected"), [([], DEFAULT_FILTER), (["--filter", "review"], "review")])
def test_the_demo_asks_the_offline_committee_with_its_filter(committee_settings, flags, expected):
    args = cli.demo.config_parser(cli.demo.DemoConfig, "demo", "").parse_args(flags)
    with pytest.raises(CommitteeReached):
        cli.demo.run(cli.demo.build_config(cli.demo.DemoConfig, args))
    (gen,) = committee_settings
    assert (gen.filter, gen.teachers, gen.out) == (expected, "offline", str(cli.demo.GEN_DIR))


def test_a_filter_the_committee_does_not_know_is_refused_in_one_line(capsys):
    assert cli.demo.main(["--filter", "peer"]) != 0
    assert "unknown filter 'peer'" in capsys.readouterr().err
