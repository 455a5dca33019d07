"""The experiment's own-loop recipe units (cli/experiment_units.py): the configs they build, without a model."""

from __future__ import annotations

import gzip
import json

import pytest

from cli import experiment
from cli.experiment import BUDGET, MAX_NEW_TOKENS, ExperimentConfig, loop_config, train_config
from cli.experiment_units import MINING_FILES, UNITS
from eval.results import render_results


@pytest.fixture
def stages(tmp_path, monkeypatch):
    """Mining and `fair gen` recorded instead of run; the mining leaves its files as mine.py would."""
    calls = []

    def mine(config):
        calls.append(("mine", config))
        config.out_dir.mkdir(parents=True, exist_ok=True)
        for name in MINING_FILES:
            (config.out_dir / name).write_text(f"{name} of {config.out_dir.name}\n")

    monkeypatch.setattr(experiment, "mine", mine)
    monkeypatch.setattr(experiment, "generate", lambda config: calls.append(("gen", config)))
    return calls


def args(tmp_path, **smoke) -> ExperimentConfig:
    return ExperimentConfig(results=str(tmp_path / "results"), work=str(tmp_path / "work"), **smoke)


def test_k4_gold_asks_four_samples_under_the_gold_check_in_its_own_folder_from_the_shared_mining(tmp_path, stages):
    """In bfloat16 (too long a float32 epoch for a session here); the mining it shares stays in the budget's dtype."""
    config = train_config(UNITS["own-k4-gold-bf16"], args(tmp_path, train_limit=5, max_steps=2), tmp_path / "work")
    (_, shared), (_, gen) = stages
    assert shared.out_dir == tmp_path / "work" / "own-corpus" and shared.limit == 5 and shared.dtype == BUDGET["dtype"]
    committee = gen.committee_config()
    assert (committee.filter, committee.samples, committee.teacher_temperature, gen.teachers) == ("gold", 4, 0.7, "offline")
    assert committee.mistakes_path == tmp_path / "work" / "own-corpus-k4-gold" / "mistakes.jsonl"
    assert committee.mistakes_path.read_text() == "mistakes.jsonl of own-corpus\n"  # the shared mining's mistakes
    assert config.committee == str(tmp_path / "work" / "own-corpus-k4-gold" / "committee.jsonl")
    assert (config.teacher, config.filter, config.max_steps, config.lora_r) == ("all", "gold", 2, BUDGET["lora_r"])
    assert gen.max_new_tokens == MAX_NEW_TOKENS and gen.dtype == BUDGET["dtype"] and config.dtype == "bfloat16"


def test_own_gold_in_bfloat16_trains_round_0s_data_in_its_own_committee_folder(tmp_path, stages):
    config = train_config(UNITS["own-gold-bf16"], args(tmp_path), tmp_path / "work")
    (_, shared), (_, gen) = stages
    assert shared.out_dir == tmp_path / "work" / "own-corpus" and shared.dtype == BUDGET["dtype"]
    assert (gen.out, gen.filter, gen.samples) == (str(tmp_path / "work" / "own-corpus-gold"), "gold", 1)
    loop = loop_config(UNITS["own-gold"], args(tmp_path), tmp_path / "work")
    # the committee run as the loop's round 0 runs it, but for its folder, cache and the paper-format files' names
    round0, where = loop.gen_config(0, loop.student), ("out", "cache", "paper_student")
    assert {k: v for k, v in vars(gen).items() if k not in where} == \
        {k: v for k, v in vars(round0).items() if k not in where}
    # and trained as round 0 is, but for the dtype (and where from and to)
    training = loop.train_settings(0, loop.student)
    where = ("out", "committee", "dtype")
    assert {k: v for k, v in vars(config).items() if k not in where} == \
        {k: v for k, v in vars(training).items() if k not in where}
    assert (config.dtype, training.dtype) == ("bfloat16", BUDGET["dtype"])


def test_every_twin_is_a_unit_of_another_dtype():
    twins = {name: unit.twin for name, unit in UNITS.items() if unit.twin}
    assert twins == {"base-bf16": "base", "own-gold-bf16": "own-gold"}
    assert all(UNITS[name].dtype == "bfloat16" and UNITS[twin].dtype is None for name, twin in twins.items())


def test_a_round_of_the_loop_has_no_dtype_of_its_own():
    from dataclasses import replace

    with pytest.raises(ValueError, match="own-gold: a round of the loop trains in the loop's dtype"):
        replace(UNITS["own-gold"], dtype="bfloat16")


def test_the_review_corpus_is_the_mining_folder_itself(tmp_path, stages):
    train_config(UNITS["own-fair"], args(tmp_path), tmp_path / "work")
    (_, shared), (_, gen) = stages
    assert gen.out == str(shared.out_dir) and (gen.filter, gen.samples) == ("review", 1)


@pytest.mark.parametrize("name, rounds", [("own-gold", 1), ("own-rounds-r1", 2), ("own-rounds-r2", 3)])
def test_round_units_are_one_gold_loop_with_the_frozen_budget(tmp_path, name, rounds):
    loop = loop_config(UNITS[name], args(tmp_path, test_limit=3, max_steps=1), tmp_path / "work")
    assert loop.rounds == rounds and loop.out_dir == tmp_path / "work" / "own-rounds"
    assert (loop.filter, loop.samples, loop.teachers, loop.eval_split, loop.eval_limit) == ("gold", 1, "offline", "test", 3)
    assert (loop.max_new_tokens, loop.dtype) == (MAX_NEW_TOKENS, BUDGET["dtype"])
    training = loop.train_settings(rounds - 1, "some/student")
    assert {k: getattr(training, k) for k in BUDGET} == BUDGET  # the budget, dtype included
    assert (training.teacher, training.filter, training.max_steps) == ("mixed", "gold", 1)
    assert training.committee == str(tmp_path / "work" / "own-rounds" / f"round{rounds - 1}" / "committee.jsonl")
    # own-gold is round 0: the same loop folder, so its data and model are round 0's, not a rerun of them
    assert [p.parent.name for p in UNITS[name].corpora(tmp_path)] == [f"round{r}" for r in range(rounds)]


def test_every_round_unit_settles_on_one_loop_folder(tmp_path):
    """A later round unit resumes the same loop: its settings differ from the earlier one's only in rounds."""
    configs = [loop_config(UNITS[n], args(tmp_path), tmp_path) for n in ("own-gold", "own-rounds-r1", "own-rounds-r2")]
    assert len({(c.out_dir, c.filter, tuple(c.train.items()), c.train_config) for c in configs}) == 1


def test_the_new_units_are_listed_and_in_the_own_tables(tmp_path, capsys):
    assert experiment.main(["--list", "--results", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    new = ("own-gold", "own-k4-gold-bf16", "own-rounds-r1", "own-rounds-r2")
    assert all(f"{n} " in listed for n in new)
    ids = [f"q{i}" for i in range(20)]
    for k, name in enumerate(("base", *new)):
        with gzip.open(tmp_path / f"{name}.predictions.jsonl.gz", "wt") as f:
            f.writelines(json.dumps({"id": i, "correct": int(i[1:]) < 2 + k}) + "\n" for i in ids)
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "unit": name, "source": UNITS[name].source, "description": UNITS[name].description,
            "accuracy": (2 + k) / 20, "correct": 2 + k, "total": 20, "correct_ids": ids[: 2 + k],
            "max_new_tokens": 256, "wall_s": 6.0, "machine": "test", "device": "cpu", "budget": {},
            "dtype": {"eval": {"dtype": UNITS[name].dtype or BUDGET["dtype"]}}}))
    page = render_results(tmp_path, UNITS, tmp_path / "page.md").read_text()
    own = page[page.index("## Our loop"):]
    assert all(f"| {n} | {UNITS[n].description} | 1 |" in own for n in new)  # a recipe row each
    assert "| own-gold vs own-rounds-r2 | s0: -15.0 [" in own and "| own-rounds-r1 vs own-rounds-r2 | s0:" in own


def test_the_offline_committee_samples_apart_at_a_temperature(tmp_path, seed_mistakes):
    """own-k4-gold-bf16's committee: above temperature 0 every teacher's 4 samples differ, the Anthropic-format one's
    (four requests of one body: its API takes no seed) included; at 0 that teacher repeats itself."""
    from fair.jsonl import read_jsonl
    from gen.committee.run import CommitteeConfig, committee
    from simulator.server import OfflineServer

    settings = UNITS["own-k4-gold-bf16"].committee
    texts = {}
    with OfflineServer(port=0, latency_ms=(0, 0)) as server:
        for temperature in (settings["teacher_temperature"], None):
            out = tmp_path / str(temperature) / "committee.jsonl"
            committee(CommitteeConfig(**settings | {"teacher_temperature": temperature}, task="svamp", limit=6,
                                      teachers="offline", base_url=server.url, mistakes=str(seed_mistakes),
                                      out=str(out), progress=False))
            texts[temperature] = [{t: {v["text"] for k, v in r["rationales"].items() if k.split("#")[0] == t}
                                   for t in ("careful", "sloppy", "harsh")} for r in read_jsonl(out)]
    sampled = texts[settings["teacher_temperature"]]
    assert len(sampled) == 6 and all(len(r[t]) >= 2 for r in sampled for t in r)
    assert sum(len(r[t]) for r in sampled for t in r) >= 0.8 * 6 * 3 * 4  # mostly four different texts
    assert all(len(r["harsh"]) == 1 for r in texts[None])


@pytest.mark.slow
def test_the_own_recipe_units_run_shortened(tmp_path, monkeypatch):
    """The real thing, shortened: SmolLM2 mines 8 train questions, trains a step and answers 3 test questions for
    a plain committee unit in bfloat16 (own-k4-gold-bf16) and for rounds 0 and 1 of the gold loop (own-gold, own-rounds-r1)."""
    from dataclasses import replace

    # A step in micro-batches of one (the loss is the same sum), under the suite's memory guard (tests/conftest.py).
    monkeypatch.setitem(BUDGET, "micro_batch_size", 1)
    for name in ("own-gold", "own-rounds-r1", "own-rounds-r2"):  # the loop reads the budget's file: its train adds it
        monkeypatch.setitem(UNITS, name, replace(UNITS[name], train=UNITS[name].train | {"micro_batch_size": 1}))
    results, work = tmp_path / "results", tmp_path / "work"
    assert experiment.main(["--units", "own-gold", "own-rounds-r1", "own-k4-gold-bf16", "--test-limit", "3",
                            "--train-limit", "8", "--max-steps", "1", "--results", str(results),
                            "--work", str(work)]) == 0
    names = ("own-gold", "own-rounds-r1", "own-k4-gold-bf16")
    units = {n: json.loads((results / f"{n}.json").read_text()) for n in names}
    for name, unit in units.items():
        assert unit["total"] == 3 and unit["loss"]["steps"] == 1 and unit["data_cost"]["filter"] == "gold"
        assert unit["dtype"]["train"]["dtype"] == unit["dtype"]["eval"]["dtype"] == (UNITS[name].dtype or BUDGET["dtype"])
    # one mining, shared: round 0's mistakes and the k4 committee's are the untrained student's
    mistakes = (work / "own-corpus" / "mistakes.jsonl").read_text()
    assert mistakes and (work / "own-rounds" / "round0" / "mistakes.jsonl").read_text() == mistakes
    assert (work / "own-corpus-k4-gold" / "mistakes.jsonl").read_text() == mistakes
    # gold: no review request; 4 samples: 3 teachers x (1 feedback + 4 rationales) a mistake
    k4 = units["own-k4-gold-bf16"]["data_cost"]
    assert k4["requests"] > 0 and k4["requests"] % 15 == 0
    gold, r1 = units["own-gold"]["data_cost"], units["own-rounds-r1"]["data_cost"]
    assert (gold["rounds"], r1["rounds"]) == (1, 2) and r1["requests"] > gold["requests"] > 0
    assert gold["requests"] % 6 == 0 and r1["requests"] % 6 == 0
    # own-gold is round 0 of the loop, own-rounds-r1 trained on from its model
    stages = json.loads((work / "own-rounds" / "stages.json").read_text())
    assert stages["round1 train"]["student"] == stages["round0 train"]["model"]
    assert "| own-rounds-r1 |" in (tmp_path / "results.md").read_text()
