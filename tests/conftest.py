"""Shared fixtures (a tiny random llama with SmolLM2's tokenizer, a fake engine, the shared data dir, the paper's
SVAMP mistakes), the helpers several test files use (the committee on the simulator, the tiny trainer), and the
memory guard: each test's own peak RSS (its setup and call; fair/rss.py) fails it above FAIR_TEST_MAX_RSS_GB
(default 4: users run the suite on laptops), and the run ends with its biggest tests."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import pytest

from fair import rss
from fair.engines.base import Generation, Sampling
from fair.tasks import default_data_dir, get_task

if TYPE_CHECKING:
    from train.train import TrainConfig

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # transformers imports deepspeed; keep it off CUDA probing


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "svamp").is_dir():
        pytest.skip(f"benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def paper_seed_files(data_dir) -> tuple[Path, Path]:
    """The paper's SVAMP committee files: its feedback and its reviewed rationales of Llama-2's mistakes."""
    seed = data_dir / "seed"
    return seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json", seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"


@pytest.fixture(scope="session")
def paper_records(paper_seed_files, data_dir) -> list[dict]:
    from train.data import load_records

    feedback, rationale = paper_seed_files
    return load_records(feedback, get_task("svamp"), rationale_path=rationale, data_dir=data_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random llama that shares SmolLM2's tokenizer and chat template: loads in well under a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from fair.models import smollm2_dir

    source = smollm2_dir()  # converted once per machine, then cached
    tokenizer = AutoTokenizer.from_pretrained(source)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.config.architectures = ["LlamaForCausalLM"]
    target = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


# ---------------------------------------------------------------------------------------------------------
# The memory guard. Setup is measured with the call: a module fixture that loads a model counts against the first
# test that needs it. A test is held to what it adds: its peak above the RSS the process had when it began (a test
# cannot be blamed for what earlier ones left resident; the summary lists both). Child processes are listed but
# not judged: ru_maxrss of the children only grows and counts a child when it is reaped, so a server an earlier
# test started and a later one reaped would be charged to the later test. Where the peak cannot be reset
# (no /proc/self/clear_refs) nothing is measured; a test that resets it itself (tests/test_rss.py) is measured from
# its last reset.

MAX_RSS_MB = float(os.environ.get("FAIR_TEST_MAX_RSS_GB", "4")) * 1024
PEAKS: dict[str, tuple[float, float, float]] = {}  # test id -> (growth, peak, child processes' peak) in MB
PEAK_KEY = pytest.StashKey[rss.Peak]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    item.stash[PEAK_KEY] = rss.Peak().start()
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item):
    result = yield
    peak = item.stash.get(PEAK_KEY, None)
    if peak is not None and peak.own:
        peak.stop()
        PEAKS[item.nodeid] = (peak.growth_mb, peak.mb, peak.children_mb)
        if peak.growth_mb > MAX_RSS_MB:  # children are listed, not judged: see the note above
            pytest.fail(f"peak RSS {peak.growth_mb:,.0f} MB above the process's {peak.start_mb:,.0f} MB at its start "
                        f"(child processes {peak.children_mb:,.0f} MB) is above FAIR_TEST_MAX_RSS_GB "
                        f"({MAX_RSS_MB / 1024:g} GB)", pytrace=False)
    return result


def pytest_terminal_summary(terminalreporter):
    if PEAKS:
        terminalreporter.section("biggest tests by own peak RSS (MB: what the test added, the process's peak, "
                                 "child processes apart)")
        for nodeid, (growth, peak, children) in sorted(PEAKS.items(), key=lambda kv: -max(kv[1][0], kv[1][2]))[:10]:
            terminalreporter.write_line(f"{growth:7,.0f} {peak:7,.0f} {children:7,.0f}  {nodeid}")


class FakeEngine:
    """Answers from a script: `answers[id]` by prompt order; counts calls; can fail after N calls (a 'kill')."""

    tokenizer = None

    def __init__(self, reply, fail_after_calls: int | None = None):
        self.reply = reply  # prompt -> completion text
        self.calls = 0
        self.prompts_seen: list[str] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, prompts: list[str], sampling: Sampling) -> list[Generation]:
        if self.fail_after_calls is not None and self.calls >= self.fail_after_calls:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like from inside the loop
        self.calls += 1
        self.prompts_seen += prompts
        return [Generation(self.reply(p), 10, 5, "stop") for p in prompts]


@pytest.fixture
def fake_engine_cls():
    return FakeEngine


@pytest.fixture(scope="module")
def seed_mistakes(tmp_path_factory, data_dir) -> Path:
    """The paper's first 60 SVAMP mistakes, once per test file."""
    return import_seed_mistakes(tmp_path_factory.mktemp("seed"), data_dir, count=60)


# ---------------------------------------------------------------------------------------------------------
# Helpers shared by several test files: import them as `from tests.conftest import ...`. Heavy modules (the
# committee, the trainer) are imported inside each helper, so that collecting the suite stays quick.

ROOT = Path(__file__).resolve().parents[1]
PLANTED_KEY = "sk-test-PLANTED-9f8e7d6c"  # a key planted in the environment; no output may carry it


def declare(folder: Path, text: str, name: str = "mine") -> Path:
    """A task file (fair/tasks/_declared.py) <folder>/<name>.yaml holding `text`."""
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


def import_seed_mistakes(folder: Path, data_dir: Path, count: int) -> Path:
    """The first `count` of the paper's real SVAMP mistakes, as our mistakes.jsonl."""
    from fair.jsonl import append_jsonl
    from fair.paper import import_mistakes
    from fair.tasks import get_task

    task = get_task("svamp")
    answers = import_mistakes(task, data_dir / "seed" / "Llama-2-7b-chat-hf_svamp_false_round0.json",
                              task.load("train", data_dir))
    path = folder / "mistakes.jsonl"
    append_jsonl(path, (a.to_json() for a in answers[:count]))
    return path


def fast(teachers, **changes):
    """Teachers that retry at once and time out soon: a test against the simulator takes seconds."""
    defaults = {"retry_backoff_s": 0.01, "timeout_s": 2.0, "max_retries": 12}
    return [dataclasses.replace(t, **(defaults | changes)) for t in teachers]


def run_small_committee(folder: Path, mistakes: Path, teachers, limit: int = 12, filter: str = "review",
                        **config) -> tuple[dict, list[dict]]:
    """The committee stage in-process on the first `limit` mistakes: (its result, the records it wrote). A run that
    stopped cleanly (its budget reached, a teacher out of quota) gives the result it stopped with. The paper's
    filter unless told: its peer reviews send every kind of request there is."""
    import asyncio

    from fair.jsonl import read_jsonl
    from gen.committee.run import CommitteeConfig, RunStopped, run_committee

    config = CommitteeConfig(task="svamp", mistakes=str(mistakes), out=str(folder / "committee.jsonl"),
                             limit=limit, filter=filter, progress=False, **config)
    try:
        result = asyncio.run(run_committee(config, teachers))
    except RunStopped as stop:
        result = stop.result
    return result, list(read_jsonl(config.out_path))


def assert_complete(records: list[dict], n: int) -> None:
    """`n` distinct records, every feedback and rationale present, every rationale reviewed by the others, and
    each acceptance the rule's."""
    from fair.paper import accept

    assert len(records) == n and len({r["id"] for r in records}) == n
    for record in records:
        assert all(f["text"] and f["error"] is None for f in record["feedback"].values()), record["feedback"]
        for author, rationale in record["rationales"].items():
            assert rationale["text"] and set(rationale["reviews"]) == set(record["rationales"]) - {author}
            mean, accepted = accept([r["score"] for r in rationale["reviews"].values()], 3.0)
            assert (rationale["mean_score"], rationale["accepted"]) == (mean, accepted)


def svamp_reply(right_every: int = 2):
    """A FakeEngine script: correct for every `right_every`-th question (by its prompt's length), wrong otherwise."""
    from fair.tasks import get_task

    gold = {get_task("svamp").prompt(e): e.gold for e in get_task("svamp").load("train")}

    def reply(prompt: str) -> str:
        number = int(re.sub(r"\D", "", str(len(prompt))))
        return f"Let me think.\nThe answer is {gold[prompt] if number % right_every == 0 else '-1'}."

    return reply


def tiny_train_config(tmp_path: Path, tiny_model_dir: Path, data_dir: Path, **overrides) -> TrainConfig:
    """`fair train` on the tiny model and the paper's SVAMP committee files: a few seconds a run. In float32,
    whatever the CPU: the tests that use it compare runs to 1e-5 (tests/test_dtype.py trains in bf16)."""
    from fair.config import make_config
    from train.train import TrainConfig

    seed = data_dir / "seed"
    return make_config(TrainConfig, {
        "task": "svamp", "student": str(tiny_model_dir), "max_length": 384, "batch_size": 8, "micro_batch_size": 2,
        "paper_feedback": str(seed / "Llama-2-7b-chat-hf_svamp_feedback_round0.json"),
        "paper_rationale": str(seed / "Llama-2-7b-chat-hf_svamp_rationale_round0.json"),
        "max_steps": 4, "lr": 1e-3, "warmup_ratio": 0.0, "dtype": "float32", "out": str(tmp_path / "run"),
    } | overrides, source="test")


def cli_args(config: TrainConfig, **changes) -> list[str]:
    """The config as `key=value` overrides for the `fair train` command line (all but `out`)."""
    values = dataclasses.asdict(dataclasses.replace(config, **changes))
    return [f"{k}={orjson.dumps(v).decode()}" for k, v in values.items() if v is not None and k != "out"]


def torchrun(args: list[str], out: Path, nproc: int) -> subprocess.CompletedProcess:
    """`fair train` under torchrun with `nproc` CPU processes (gloo)."""
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", str(nproc),
               "--master_port", str(29500 + os.getpid() % 1000), "-m", "train.train", *args, "--out", str(out)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


# ---------------------------------------------------------------------------------------------------------
# Scripted teachers: the committee with no network (tests/test_committee_replies.py, tests/test_recipes.py)


def kind_of(request) -> str:
    """feedback, rationale or review: which of our prompts (gen/committee/prompts.py) a ChatRequest holds."""
    user = request.messages[-1][1]
    return "review" if "Solution under review:" in user else "feedback" if "Student's answer:" in user else "rationale"


class ScriptedProvider:
    """One teacher's provider: answers from its script, (kind, mistake number) -> ChatResponse, and logs every
    request it is sent as (teacher, kind, mistake number, request)."""

    def __init__(self, name: str, scripts: dict, questions: dict[str, int], sent: list):
        self.name, self.scripts, self.questions, self.sent = name, scripts, questions, sent

    async def complete(self, request):
        import asyncio

        await asyncio.sleep(0)  # a real send yields to the loop
        kind, user = kind_of(request), request.messages[-1][1]
        number = next(n for q, n in self.questions.items() if user.startswith(f"Question:\n{q}\n\n"))
        self.sent.append((self.name, kind, number, request))
        return self.scripts[self.name](kind, number)


@pytest.fixture
def scripted(tmp_path, data_dir, monkeypatch):
    """(teachers file, mistakes file, scripts to fill per teacher, the log of requests sent): three OpenAI-format
    teachers a, b and c behind ScriptedProviders, on the paper's first 6 SVAMP mistakes."""
    from fair.jsonl import read_jsonl
    from fair.records import StudentAnswer, question_block
    from fair.tasks import get_task
    from gen.teachers import client as client_module

    mistakes = import_seed_mistakes(tmp_path, data_dir, count=6)
    answers = [StudentAnswer.from_json(r, "test") for r in read_jsonl(mistakes)]
    questions = {question_block(get_task("svamp"), a): n for n, a in enumerate(answers)}
    scripts: dict = {}
    sent: list = []
    monkeypatch.setattr(client_module, "make_provider",
                        lambda view, http: ScriptedProvider(view.name, scripts, questions, sent))
    teachers = tmp_path / "teachers.yaml"
    teachers.write_bytes(orjson.dumps({"teachers": [
        {"name": name, "provider": "openai", "model": f"model-{name}", "base_url": "http://127.0.0.1:9",
         "rpm": 100_000, "tpm": 100_000_000, "price_input": 1.0, "price_cached_input": 0.25, "price_output": 4.0}
        for name in ("a", "b", "c")]}))
    return teachers, mistakes, scripts, sent


# ---------------------------------------------------------------------------------------------------------
# The Hugging Face hub, faked: uploads (fair/hub.py) are tested without a network or an account.

HUB_TOKEN = "hf_TESTtokenThatMustNeverBeShown0123456789"


class FakeHfApi:
    """huggingface_hub's HfApi as fair/hub.py uses it: records the calls, and fails as told."""

    calls: list[tuple] = []
    repos: dict[str, bool] = {}  # repository -> private
    fail: Exception | None = None

    def create_repo(self, repo_id, *, repo_type, private, exist_ok):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))
        if self.fail:
            raise self.fail
        self.repos.setdefault(repo_id, private)  # exist_ok: an existing one keeps its visibility
        return f"https://huggingface.co/{repo_type}s/{repo_id}"

    def repo_info(self, repo_id, *, repo_type):
        return types.SimpleNamespace(private=self.repos[repo_id])

    def upload_folder(self, *, repo_id, folder_path, repo_type, commit_message):
        files = sorted(str(p.relative_to(folder_path)) for p in Path(folder_path).rglob("*") if p.is_file())
        self.calls.append(("upload_folder", repo_id, repo_type, files))


@pytest.fixture
def hub(monkeypatch):
    """FakeHfApi in place of huggingface_hub's, with HUB_TOKEN as the environment's token."""
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls, FakeHfApi.repos, FakeHfApi.fail = [], {}, None
    return FakeHfApi
