"""The trained student's model card (README.md with the hub's YAML header), and `fair push-model`.

    fair train --task svamp                        # writes <out>/final/README.md (and <out>/adapter/ with --save-adapter)
    fair eval --model <out>/final --task svamp     # data/eval/final/svamp-test/summary.json
    fair push-model <out>/final you/svamp-student  # the card again, now with that evaluation; uploads, private

The card is made from the files a run leaves beside final/: train.yaml (the recipe: student, teachers' data,
selection, alpha, LoRA, optimisation), data_report.json (the examples it trained on and those left out),
train_summary.json (steps, the committee file), and beside the committee file it trained on, committee.yaml and
committee_stats.json (the committee, its prompts and threshold, what it spent). Training writes it; push-model
writes it again before it uploads, with the evaluations found then: eval is a stage of its own and never writes
into a training run, so the card reads eval's summary.json files at push time, those named with `--eval`, else
each one under data/eval/<folder's name>/ whose `model` is this folder. A folder moved away from its run keeps
the card it has. A LoRA run with save_adapter also writes <out>/adapter/: the adapter alone, in PEFT's format,
with its own card; push-model uploads either folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import yaml

from fair.config import Validated
from fair.errors import FairError
from fair.models import DEFAULT_STUDENT, SMOLLM2_HUB_ID, model_short_name
from fair.recipes import filter_rule


@dataclass
class PushModelConfig(Validated):
    folder: str  # a trained model folder: <out>/final (merged), or <out>/adapter (LoRA's adapter alone)
    repo: str  # the hub model repository to upload to (owner/name); token: HF_TOKEN or `hf auth login`
    public: bool = False  # make a new repository public, or upload to a public one (else private ones only)
    eval: tuple[str, ...] = ()  # `fair eval` folders (<out>/<task>-<split>) for the card; none: each one under data/eval/<folder's name>/ that evaluated this folder


def read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else orjson.loads(path.read_bytes())) or {}


def base_model(student: str) -> str | None:
    """The student's hub id, for the header's base_model; None for a local folder (no hub page to link)."""
    if student == DEFAULT_STUDENT:  # the bundled GGUF of this hub model, de-quantised (fair/models.py)
        return SMOLLM2_HUB_ID
    return student if student.count("/") == 1 and not Path(student).exists() else None


def committee_facts(train: dict[str, Any], summary: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(what the data was, committee.yaml, committee_stats.json) of the committee file the run trained on
    (train_summary.json names it, its default resolved)."""
    if train.get("paper_feedback"):
        return f"the paper's files `{train['paper_feedback']}` and `{train['paper_rationale']}`", {}, {}
    if not summary.get("committee"):
        return "a committee file (train_summary.json does not name it)", {}, {}
    path = Path(summary["committee"])
    return f"`{path}`", read(path.with_name("committee.yaml")), read(path.with_name("committee_stats.json"))


def recipe(train: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    source, committee, stats = committee_facts(train, summary)
    lora = (f"LoRA r {train['lora_r']}, alpha {train['lora_alpha']}, dropout {train['lora_dropout']}, on every "
            "linear layer" if train["lora"] else "full fine-tuning")
    spent = (stats.get("budget") or {}).get("spent_usd")
    rows = [
        ("base model", f"`{train['student']}`"),
        ("data", f"{source}: the committee's feedback and rationales on the student's own mistakes on "
                 f"`{train['task']}`'s train split"),
        ("committee", f"teachers `{committee['teachers']}`, prompts `{committee['prompts']}`"
         if committee else "the paper's (its files)" if train.get("paper_feedback") else "not recorded"),
        ("filter", filter_rule(train["filter"], committee.get("threshold", "3 (the paper's)" if train.get(
            "paper_feedback") else "(not recorded)")) if train.get("filter") else "not recorded"),
        ("selection", f"`--teacher {train['teacher']}`, seed {train['seed']}, {train['prompt_format']} prompts"),
        ("objective", f"{train['alpha']} x feedback loss + {1 - train['alpha']:g} x rationale loss"),
        ("training", f"{lora}; lr {train['lr']} ({train['schedule']}, warm-up {train['warmup_ratio']}), batch "
                     f"{train['batch_size']}, {summary.get('steps', '?')} steps (epochs {train['epochs']}, max_steps "
                     f"{train['max_steps']}), max_length {train['max_length']}, dtype {train['dtype']}"),
        ("budget", f"the committee's teachers cost ${spent:.4f} (committee_stats.json)" if spent is not None
         else "not recorded"),
    ]
    return ["| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows)]


def data_lines(report: dict[str, Any]) -> list[str]:
    if not report:
        return ["Not recorded (no data_report.json beside the model)."]
    build, tokens = report["build"], report["tokenize"]
    lines = [f"{build['mistakes']} mistakes: {build['feedback_examples']} feedback and {build['rationale_examples']} "
             f"rationale examples; {tokens['examples']} trained on, {tokens['skipped_too_long']} left out for not "
             f"fitting in max_length."]
    lines += [f"- skipped {n} mistakes: {reason}" for reason, n in build["skipped"].items()]
    lines += [f"- decontamination: {yaml.safe_dump(report['decontamination'], default_flow_style=True).strip()}"
              ] if "decontamination" in report else []
    return lines


def eval_lines(folder: Path, evals: list[dict[str, Any]]) -> list[str]:
    if not evals:
        return [f"Not evaluated when this card was written: `fair eval --model {folder} --task TASK`, then "
                "`fair push-model` again adds it here."]
    lines = ["| task | split | accuracy | correct | unparseable | dtype |", "| --- | --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {e['task']} | {e['split']} | {e['accuracy']:.2%} | {e['correct']}/{e['total']} | "
              f"{e['unparseable']} | {(e.get('dtype') or {}).get('dtype', '-')} |" for e in evals]
    return lines + ["", "Graded by fair-distill's task graders (`fair eval`'s summary.json)."]


def model_card(folder: Path, evals: list[dict[str, Any]], repo: str | None = None) -> str | None:
    """The card of a model folder in a training run (`repo`: where it is pushed, for the code that loads it);
    None when the run's train.yaml is not beside it."""
    run = folder.parent
    train = read(run / "train.yaml")
    if not train:
        return None
    adapter = (folder / "adapter_config.json").exists()
    meta = {"library_name": "peft" if adapter else "transformers", "pipeline_tag": "text-generation",
            "tags": ["fair-distill", "distillation", train["task"], *(["lora"] if train["lora"] else [])]}
    if base := base_model(train["student"]):
        meta = {"base_model": base} | meta
    where = repo or folder
    use = (["```python", "from peft import AutoPeftModelForCausalLM",
            f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # the base model, then this adapter',
            "```"] if adapter else
           ["```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'model = AutoModelForCausalLM.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")  # its chat template: the prompts it was taught with',
            "```"])
    what = "A LoRA adapter (PEFT) for" if adapter else "A fine-tune of"
    body = [f"# {model_short_name(train['student'])} taught by a committee on {train['task']}", "",
            f"{what} `{train['student']}`, trained by fair-distill (FAIR) on feedback about its own mistakes and on "
            "teachers' step-by-step rationales (which ones: the recipe below).", "",
            "## Recipe", "", *recipe(train, read(run / "train_summary.json")), "",
            "## Data", "", *data_lines(read(run / "data_report.json")), "",
            "## Evaluation", "", *eval_lines(folder, evals), "", "## Use", "", *use, ""]
    return f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n" + "\n".join(body)


def write_card(folder: Path, evals: list[dict[str, Any]] | None = None, repo: str | None = None) -> None:
    if (card := model_card(folder, evals or [], repo)) is not None:
        (folder / "README.md").write_text(card)


def write_cards(run: Path) -> None:
    """At the end of training: the card of each model folder the run wrote (final/, and adapter/ if saved)."""
    for name in ("final", "adapter"):
        if (run / name).is_dir():
            write_card(run / name)


# ----------------------------------------------------------------------------------------------------------
# fair push-model


def find_evals(config: PushModelConfig) -> list[dict[str, Any]]:
    """The summary.json of each --eval folder, else those under data/eval/<name>/ that evaluated this folder."""
    if config.eval:
        paths = [Path(p) / "summary.json" for p in config.eval]
        if missing := [str(p) for p in paths if not p.exists()]:
            raise FairError(f"no `fair eval` summary at {', '.join(missing)}")
        return [read(p) for p in paths]
    folder = Path(config.folder).resolve()
    found = sorted((Path("data") / "eval" / model_short_name(config.folder)).glob("*/summary.json"))
    return [s for p in found if Path((s := read(p)).get("model", "")).resolve() == folder]


def push_model(config: PushModelConfig) -> str:
    from fair.hub import push_folder

    folder = Path(config.folder)
    if not ((folder / "config.json").exists() or (folder / "adapter_config.json").exists()):
        raise FairError(f"{folder} is not a model folder (no config.json or adapter_config.json): push <out>/final "
                        "or, after a --save-adapter run, <out>/adapter")
    evals = find_evals(config)
    write_card(folder, evals, config.repo)
    return push_folder(folder, config.repo, "model", config.public,
                       f"fair push-model: {folder} ({len(evals)} evaluation(s) on the card)")
