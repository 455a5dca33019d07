"""Stopping `fair train` on a signal (train/preempt.py): the step in flight is saved, every rank stops at the same
step, the rerun continues as if nothing happened; and the collectives of a GPU run are placed on its GPU."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import train.train as trainer
from fair.errors import Stopped, main_guard
from fair.jsonl import read_jsonl
from tests.conftest import tiny_train_config
from train.distributed import Dist, setup_distributed
from train.preempt import StopRequests
from train.train import train


@pytest.fixture
def config(tmp_path, tiny_model_dir, data_dir):
    # save_every 0: a checkpoint only at the epoch's end, far beyond these runs' last step
    return tiny_train_config(tmp_path, tiny_model_dir, data_dir, micro_batch_size=4, max_steps=6, save_every=0)


def logged(folder: Path, key: str = "step") -> list:
    return [r[key] for r in read_jsonl(folder / "log.jsonl")]


def test_sigterm_saves_the_step_in_flight_and_the_rerun_matches_an_uninterrupted_run(config, tmp_path, monkeypatch):
    full = dataclasses.replace(config, out=str(tmp_path / "full"))
    train(full)
    stopped = dataclasses.replace(config, out=str(tmp_path / "stopped"))
    real_step, handler = trainer.take_step, signal.getsignal(signal.SIGTERM)

    def terminated_during_step_3(run, batch, step, lr):
        if step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(run, batch, step, lr)
    monkeypatch.setattr(trainer, "take_step", terminated_during_step_3)
    with pytest.raises(Stopped, match=r"stopped by SIGTERM after step 3 of 6, saved in .*step-3; rerun") as stop:
        train(stopped)
    assert stop.value.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == handler  # the run's handler is gone with the run
    assert logged(tmp_path / "stopped") == [1, 2, 3]
    assert sorted(p.name for p in (tmp_path / "stopped" / "checkpoints").iterdir()) == ["step-3"]
    assert not (tmp_path / "stopped" / "final").exists()

    monkeypatch.undo()
    train(stopped)  # the same command resumes from step 3
    assert logged(tmp_path / "stopped") == [1, 2, 3, 4, 5, 6]
    assert logged(tmp_path / "stopped", "loss") == pytest.approx(logged(tmp_path / "full", "loss"), rel=1e-5)


def test_a_stop_on_a_step_that_was_saved_anyway_saves_it_once(config, tmp_path, monkeypatch):
    every_two = dataclasses.replace(config, save_every=2, out=str(tmp_path / "two"))
    real_step = trainer.take_step
    saves = []
    real_save = trainer.save_checkpoint

    def interrupted_during_step_4(run, batch, step, lr):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # a first Ctrl-C stops like SIGTERM
        return real_step(run, batch, step, lr)
    monkeypatch.setattr(trainer, "take_step", interrupted_during_step_4)
    monkeypatch.setattr(trainer, "save_checkpoint", lambda folder, *a, **k: saves.append(folder.name) or
                        real_save(folder, *a, **k))
    with pytest.raises(Stopped, match="stopped by SIGINT after step 4 of 6") as stop:
        train(every_two)
    assert stop.value.signum == signal.SIGINT
    assert saves == ["step-2", "step-4"]


def test_ctrl_c_after_a_stop_was_asked_stops_at_once_and_the_handlers_are_restored():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    with pytest.raises(KeyboardInterrupt), StopRequests() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)  # SLURM's warning
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGUSR1  # the first signal names the stop
        os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_signal_after_the_last_agreement_is_not_dropped():
    """A signal that lands after the last step's agreement gets its own handling once the loop's is gone: here
    Python's own, set for the test. With os.kill and the suite's SIGINT owner it failed now and then in the whole
    suite (DID NOT RAISE; never alone): os.kill may be delivered to another thread, and the owner is whatever
    earlier tests left. raise_signal delivers to this thread at once."""
    owner = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), StopRequests():
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, owner)


class TwoRanks(Dist):
    """This rank of two, and what the other rank adds to every sum."""

    def __init__(self, other: float) -> None:
        super().__init__(rank=0, world=2)
        self.other = other

    def all_sum(self, values: list[float]) -> list[float]:
        return [v + self.other for v in values]


def test_a_rank_stops_when_any_rank_was_asked():
    stop = StopRequests()
    assert stop.agreed(TwoRanks(other=0.0)) is None
    assert stop.agreed(TwoRanks(other=1.0)) == signal.SIGTERM  # only the other rank got the signal so far
    stop.signum = signal.SIGUSR1
    assert stop.agreed(TwoRanks(other=0.0)) == signal.SIGUSR1


def test_a_stopped_command_ends_with_one_line_and_128_plus_the_signal(capsys):
    def work():
        raise Stopped(signal.SIGTERM, "stopped by SIGTERM after step 3 of 6, saved in out/checkpoints/step-3")
    assert main_guard("fair train", work) == 143
    copy = pickle.loads(pickle.dumps(Stopped(signal.SIGUSR1, "stopped")))  # as a worker's error reaches its parent
    assert (copy.signum, str(copy)) == (signal.SIGUSR1, "stopped")
    assert capsys.readouterr().err == "fair train: stopped by SIGTERM after step 3 of 6, saved in out/checkpoints/step-3\n"


def test_a_gpu_rank_picks_its_gpu_before_the_first_collective(monkeypatch):
    """NCCL moves CUDA tensors only, on the current device: each rank's must be set before anything is sent
    (creating the process group sends nothing), and the collectives run there."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", i)))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    fake = types.SimpleNamespace(init_distributed=lambda dist_backend: calls.append(("init", dist_backend)))
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    dist = setup_distributed("configs/deepspeed/zero2.json")
    assert calls == [("init", "nccl"), ("set_device", 1)]  # DeepSpeed sets LOCAL_RANK under mpirun
    assert (dist.rank, dist.world, dist.zero, dist.device) == (1, 2, True, "cuda:1")


@pytest.mark.slow
def test_sigterm_to_torchrun_stops_both_ranks_at_one_step_and_the_rerun_continues(config, tmp_path):
    from tests.conftest import ROOT, cli_args, torchrun

    long = dataclasses.replace(config, max_steps=40)
    ds = cli_args(long, deepspeed=str(ROOT / "configs" / "deepspeed" / "zero2.json"))
    out = tmp_path / "ds"
    env = os.environ | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2", "--master_port",
               str(29500 + os.getpid() % 1000), "-m", "train.train", *ds, "--out", str(out)]
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while not ((out / "log.jsonl").exists() and (out / "log.jsonl").read_text()) and launcher.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    launcher.send_signal(signal.SIGTERM)  # as SLURM or `kill` would: torchrun forwards it to both ranks
    _, stderr = launcher.communicate(timeout=120)
    steps = logged(out)
    assert 1 <= len(steps) < 40, stderr[-3000:]
    line = f"stopped by SIGTERM after step {steps[-1]} of 40, saved in {out}/checkpoints/step-{steps[-1]}"
    assert stderr.count(line) == 2, stderr[-3000:]  # both ranks, at the same step
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{steps[-1]}"]

    resumed = torchrun(ds, out, nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert logged(out) == list(range(1, 41))
    single = dataclasses.replace(long, out=str(tmp_path / "single"))
    train(single)
    assert logged(out, "loss") == pytest.approx(logged(tmp_path / "single", "loss"), rel=2e-4)
