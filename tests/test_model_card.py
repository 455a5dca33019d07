"""The trained student's model card, `--save-adapter` (a folder PEFT loads onto the base), and `fair push-model`."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
import torch
import yaml

from cli.main import main
from fair.config import make_config
from fair.errors import FairError
from fair.jsonl import write_json
from tests.conftest import HUB_TOKEN, tiny_train_config
from train.card import PushModelConfig, find_evals
from train.train import TrainConfig, train


@pytest.fixture
def lora_run(tmp_path, tiny_model_dir, data_dir):
    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir, lora=True, lora_r=4, lora_alpha=8,
                               lora_dropout=0.0, max_steps=2, save_adapter=True)
    return config, train(config)


def card(folder) -> tuple[dict, str]:
    _, header, body = (folder / "README.md").read_text().split("---\n", 2)
    return yaml.safe_load(header), body


def test_a_lora_run_writes_its_cards_and_an_adapter_that_peft_loads_onto_the_base(lora_run, tiny_model_dir):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    config, final = lora_run
    adapter = final.parent / "adapter"
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), adapter)
    merged = model.merge_and_unload().state_dict()
    exported = load_file(final / "model.safetensors")
    assert exported.keys() <= merged.keys()
    assert all(torch.allclose(merged[k], v, atol=1e-6) for k, v in exported.items())
    base = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(base[k], v) for k, v in exported.items())  # the adapter is the trained one

    header, body = card(final)
    assert header["library_name"] == "transformers" and "lora" in header["tags"] and "base_model" not in header
    for fact in ("0.5 x feedback loss + 0.5 x rationale loss", "LoRA r 4, alpha 8", "the paper's files",
                 "`--teacher mixed`, seed 0, chat prompts", "2 steps", "Not evaluated when this card was written"):
        assert fact in body, fact
    report = orjson.loads((final.parent / "data_report.json").read_bytes())
    assert f"{report['tokenize']['examples']} trained on" in body
    assert card(adapter)[0]["library_name"] == "peft" and "AutoPeftModelForCausalLM" in card(adapter)[1]


def test_push_model_puts_the_evaluation_on_the_card_and_uploads_privately(lora_run, tmp_path, hub, capsys):
    _, final = lora_run
    assert main(["eval", "--model", str(final), "--engine", "hf", "--limit", "2", "--max-new-tokens", "4",
                 "--out", str(tmp_path / "eval")]) == 0
    summary = orjson.loads((tmp_path / "eval" / "svamp-test" / "summary.json").read_bytes())
    assert main(["push-model", str(final), "me/student", "--eval", str(tmp_path / "eval" / "svamp-test")]) == 0
    _, body = card(final)
    assert f"| svamp | test | {summary['accuracy']:.2%} | {summary['correct']}/2 |" in body
    assert 'AutoModelForCausalLM.from_pretrained("me/student")' in body and "| committee | the paper's" in body
    assert hub.calls[0] == ("create_repo", "me/student", "model", True, True)
    assert hub.calls[1][:3] == ("upload_folder", "me/student", "model")
    assert {"README.md", "model.safetensors", "config.json"} <= set(hub.calls[1][3])
    out = capsys.readouterr()
    assert HUB_TOKEN not in out.out + out.err
    assert main(["push-model", str(tmp_path), "me/student"]) == 2
    assert "is not a model folder" in capsys.readouterr().err


def test_push_model_finds_the_evaluations_of_this_folder_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    final = tmp_path / "run" / "final"
    mine = {"task": "svamp", "split": "test", "model": str(final), "accuracy": 0.5}
    write_json(tmp_path / "data/eval/final/svamp-test/summary.json", mine)
    write_json(tmp_path / "data/eval/final/gsm8k-test/summary.json", mine | {"model": "other/final"})
    assert find_evals(PushModelConfig(folder="run/final", repo="me/x")) == [mine]
    with pytest.raises(FairError, match="no `fair eval` summary at"):
        find_evals(PushModelConfig(folder="run/final", repo="me/x", eval=("elsewhere",)))


def test_save_adapter_needs_lora(tmp_path, tiny_model_dir, data_dir):
    config = tiny_train_config(tmp_path, tiny_model_dir, data_dir)
    with pytest.raises(FairError, match="save_adapter saves a LoRA adapter: it needs lora"):
        make_config(TrainConfig, dataclasses.asdict(config) | {"save_adapter": True}, source="test")


def test_the_card_of_a_committee_run_names_its_committee_and_spending(tmp_path):
    """A run on committee.jsonl (not the paper's files): the card reads the committee's settings and spending
    beside the file train_summary.json names; the bundled student has a hub id for base_model."""
    from fair.config import save_config
    from gen.committee.run import CommitteeConfig
    from train.card import model_card

    committee = tmp_path / "data" / "committee.jsonl"
    save_config(CommitteeConfig(task="svamp", teachers="offline", filter="review", threshold=3.5),
                committee.with_name("committee.yaml"))
    write_json(committee.with_name("committee_stats.json"), {"budget": {"spent_usd": 1.25}})
    run = tmp_path / "run"
    save_config(TrainConfig(committee=str(committee), teacher="all", alpha=0.25, filter="gold+review"),
                run / "train.yaml")  # the card says the training's filter, not the committee's
    write_json(run / "train_summary.json", {"steps": 40, "committee": str(committee)})
    write_json(run / "data_report.json", {
        "build": {"mistakes": 10, "feedback_examples": 9, "rationale_examples": 12, "skipped": {"feedback failed": 1}},
        "tokenize": {"examples": 21, "skipped_too_long": 0}, "decontamination": {"dropped": 2}})
    (run / "final").mkdir()
    header, body = model_card(run / "final", []).split("---\n", 2)[1:]
    assert yaml.safe_load(header)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    for fact in (f"`{committee}`", "teachers `offline`, prompts `fair`", "gold+review: a rationale is accepted when "
                 "it has the gold answer and the mean of its peers' valid review scores is above 3.5", "`--teacher all`", "0.25 x feedback loss + 0.75 x rationale loss", "full fine-tuning",
                 "40 steps", "cost $1.2500", "skipped 1 mistakes: feedback failed", "decontamination: {dropped: 2}"):
        assert fact in body, fact
    assert model_card(tmp_path / "elsewhere" / "final", []) is None  # moved away from its run: its card stays
