"""Where a training run's numbers go: log.jsonl, the console, a progress bar, and the trackers users watch.

    fair train --task svamp --report-to tensorboard       # then: tensorboard --logdir checkpoints/
    fair train --task svamp --report-to wandb,mlflow      # several: a comma list, or the values after one flag
    WANDB_MODE=offline fair train ... --report-to wandb   # nothing leaves the machine; `wandb sync` it later

Each optimizer step, rank 0 (the only one that reports, under DeepSpeed too) appends the step's record to
log.jsonl, prints `step i/N loss ...` every log_every steps, moves the progress bar (fair/progress.py) and sends
the trackers train/loss, train/feedback_loss, train/rationale_loss (a kind absent from the step is left out, not
sent as 0), train/lr, train/grad_norm (before clipping), train/tokens_per_s (every token the step read) and
train/target_tokens_per_s (those it learned from). At the end: train_summary.json, and its seconds and examples to
the trackers. A driver that evaluates the trained model (`make demo`, `make experiment`, `fair loop`) adds the evaluation to the
same runs with `report_evaluation`: eval/<task>-<split>/accuracy at the last step.

Where each writes, offline first; each reads its own environment for the rest (servers, keys, projects):
    tensorboard  <out>/tensorboard: event files (a resumed run drops the events after its checkpoint: purge_step)
    wandb        <out>/wandb; project $WANDB_PROJECT or fair-distill; WANDB_MODE=offline keeps it on disk
    mlflow       $MLFLOW_TRACKING_URI, else mlflow's default (./mlflow.db); experiment fair-distill
    trackio      $TRACKIO_DIR, else ~/.cache/huggingface/trackio; project fair-distill; local unless a Space is set

One run per output folder: the trackers' run ids are kept in <out>/trackers.json, so the same command again (a
resume) and the evaluation after training continue the same run in every tracker instead of starting another.
A resume repeats the steps a killed run took after its last checkpoint, and a rerun repeats the end's numbers;
each tracker keeps one value a metric and step: TensorBoard purges the later events, W&B drops a step at or
before its run's last (its summary takes the new end), and MLflow and trackio (which would keep both) are not
sent a step at or before the last one they have, nor an end's metric they have at that step: the first value
stands (trackio: as its local database has them).
The run's settings are sent once, when the run is created (mlflow refuses a parameter changed later, and a
resume may change the run-only ones, such as micro_batch_size).

Trackers sit behind `Tracker` (log, summary, close; W&B keeps the end's numbers in its run summary, the others
as metrics at the last step). Each is imported only when asked for: none is a dependency of the
package, and a missing one is one line naming `pip install -e .[track]` before anything is trained. One that
cannot open its run (a server down, a login refused) is one line too, without a URL's credentials or the value of
any *KEY*, *TOKEN*, *PASSWORD* or *SECRET* environment variable, which a tracker's own message may quote.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

from fair.errors import FairError
from fair.jsonl import append_jsonl, write_json
from fair.progress import Progress

PROJECT = "fair-distill"  # the wandb project, the mlflow experiment and the trackio project
IDS_FILE = "trackers.json"
# record key -> metric name: what each step sends (the record is train/step.py's take_step plus timings)
STEP_METRICS = {"loss": "train/loss", "feedback_loss": "train/feedback_loss", "rationale_loss": "train/rationale_loss",
                "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
                "target_tokens_per_s": "train/target_tokens_per_s"}


class Tracker(Protocol):
    """One tracker's run. `run_id` is what reopens it (None where the folder itself is the run)."""

    run_id: str | None

    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def summary(self, metrics: dict[str, float], step: int) -> None:
        """The numbers of the run's end (training's, the evaluation's), `step` its last."""

    def close(self) -> None: ...


def need(module: str, name: str) -> Any:
    """The tracker's package, imported now that it is asked for, or the one line that says how to get it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FairError(missing(name)) from None


def missing(name: str) -> str:
    return f"report_to {name} needs the {name} package, which is not installed: pip install -e .[track]"


# ----------------------------------------------------------------------------------------------------------
# The trackers: each opened with (run folder, run id or None, settings or None, first step), offline first


class TensorBoard:
    def __init__(self, out: Path, run_id: str | None, settings: dict | None, first_step: int):
        need("tensorboard", "tensorboard")  # torch's writer needs it, and says so less plainly
        writer_cls = need("torch.utils.tensorboard", "tensorboard").SummaryWriter
        # purge_step: events a killed run logged after its last checkpoint are hidden, since they are logged again
        self.writer = writer_cls(log_dir=str(out / "tensorboard"), purge_step=first_step)
        self.run_id = None
        if settings is not None:
            self.writer.add_text("settings", "\n".join(f"    {k}: {v}" for k, v in settings.items()), first_step)

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    summary = log

    def close(self) -> None:
        self.writer.close()


class WandB:
    def __init__(self, out: Path, run_id: str | None, settings: dict | None, first_step: int):
        wandb = need("wandb", "wandb")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=out.name, dir=str(out),
                              id=run_id, resume="allow", config=settings)
        self.run_id = self.run.id

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, metrics: dict[str, float], step: int) -> None:
        # The run's summary, not its history: a resumed W&B run's history goes on after its last step and drops
        # a step logged at or before it, which is where the evaluation after training belongs.
        self.run.summary.update(metrics)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    def __init__(self, out: Path, run_id: str | None, settings: dict | None, first_step: int):
        self.mlflow = need("mlflow", "mlflow")
        if run_id is None:
            self.mlflow.set_experiment(PROJECT)
        self.run = self.mlflow.start_run(run_id=run_id, run_name=None if run_id else out.name)
        self.run_id = self.run.info.run_id
        if settings is not None:
            self.mlflow.log_params(settings)
        self.client = self.mlflow.MlflowClient()
        self.logged = max((m.step for m in self.client.get_metric_history(self.run_id, STEP_METRICS["loss"])),
                          default=0)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step > self.logged:
            self.mlflow.log_metrics(metrics, step=step)

    def summary(self, metrics: dict[str, float], step: int) -> None:
        new = {name: value for name, value in metrics.items()
               if all(m.step != step for m in self.client.get_metric_history(self.run_id, name))}
        if new:
            self.mlflow.log_metrics(new, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


class Trackio:
    def __init__(self, out: Path, run_id: str | None, settings: dict | None, first_step: int):
        self.trackio = need("trackio", "trackio")
        # The run's name is its identity in trackio: made unique once (folders named `train` abound), then kept.
        self.run_id = run_id or f"{out.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.trackio.init(project=PROJECT, name=self.run_id, config=settings, resume="allow", embed=False)
        self.storage = need("trackio.sqlite_storage", "trackio").SQLiteStorage  # its local database
        self.logged = self.storage.get_max_step_for_run(PROJECT, self.run_id) or 0

    def log(self, metrics: dict[str, float], step: int) -> None:
        if step > self.logged:
            self.trackio.log(metrics, step=step)

    def summary(self, metrics: dict[str, float], step: int) -> None:
        new = {name: value for name, value in metrics.items()
               if not self.storage.get_metric_values(PROJECT, self.run_id, name, step=step)}
        if new:
            self.trackio.log(new, step=step)

    def close(self) -> None:
        self.trackio.finish()


TRACKERS: dict[str, Callable[[Path, str | None, dict | None, int], Tracker]] = {
    "tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow, "trackio": Trackio}


def tracker_names(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """report_to as given (`tensorboard,wandb`, a YAML list, the values after --report-to), as known names."""
    names = tuple(n.strip() for item in ([value] if isinstance(value, str) else value)
                  for n in str(item).split(",") if n.strip())
    for name in names:
        if name not in TRACKERS:
            raise FairError(f"unknown report_to {name!r} (choose from {', '.join(TRACKERS)})")
        if importlib.util.find_spec(name) is None:  # found, not imported: every rank refuses it, before any work
            raise FairError(missing(name))
    return tuple(dict.fromkeys(names))  # a name given twice is one run


def open_trackers(names: tuple[str, ...], out: Path, settings: dict, first_step: int) -> list[Tracker]:
    """Each named tracker's run for this folder: the one in trackers.json, else a new one (whose id is kept)."""
    ids_path = out / IDS_FILE
    ids = _read_ids(ids_path)
    opened: list[Tracker] = []
    try:
        for name in names:
            known = name in ids
            try:
                tracker = TRACKERS[name](out, ids.get(name), None if known else settings, first_step)
            except FairError:
                raise
            except Exception as e:  # a server or login refused: one line, and every rank stops (train/distributed.py)
                first = str(e).splitlines()[0] if str(e) else ""
                raise FairError(f"report_to {name}: could not open its run: {type(e).__name__}: "
                                f"{without_secrets(first)}") from None  # the cause holds them as it was
            opened.append(tracker)
            ids[name] = tracker.run_id
            write_json(ids_path, ids)  # at once: a run created and then lost to a crash is not created again
    except BaseException:
        close_all(opened)
        raise
    return opened


# A URL's user and password (`https://user:token@host`, as MLFLOW_TRACKING_URI may carry them)
URL_CREDENTIALS = re.compile(r"(?<=://)[^/\s@]+@")
# The trackers' secrets read from the environment (W&B, MLflow, Databricks, a trackio Space's hub token)
SECRET_VARIABLE = re.compile(r"KEY|TOKEN|PASSWORD|SECRET")


def without_secrets(text: str) -> str:
    """A tracker's message as it may be shown: no URL credentials, no value of a secret environment variable."""
    text = URL_CREDENTIALS.sub("***@", text)
    for name, value in os.environ.items():
        if SECRET_VARIABLE.search(name) and len(value) >= 4:  # shorter, and it would shred the message
            text = text.replace(value, "***")
    return text


def _read_ids(path: Path) -> dict[str, str | None]:
    import orjson

    if not path.exists():
        return {}
    try:
        return orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        raise FairError(f"{path}: not JSON; delete it to start the trackers' runs afresh") from None


def close_all(trackers: list[Tracker]) -> None:
    for tracker in reversed(trackers):
        tracker.close()


def log_all(trackers: list[Tracker], metrics: dict[str, float], step: int) -> None:
    for tracker in trackers:
        tracker.log(metrics, step)


def summary_all(trackers: list[Tracker], metrics: dict[str, float], step: int) -> None:
    for tracker in trackers:
        tracker.summary(metrics, step)


# ----------------------------------------------------------------------------------------------------------
# What train/train.py calls: a run's log, and the evaluation after it


class RunLog:
    """What a training run records, on rank 0 only: log.jsonl, the console, the progress bar, the trackers, and
    train_summary.json at the end. A context manager: the bar and the trackers' runs are closed however it ends."""

    def __init__(self, config: Any, first_step: int, total: int, dist: Any):
        self.config, self.total, self.rank = config, total, dist.rank
        self.out: Path = config.out_dir
        self.trackers: list[Tracker] = []
        # on_rank_zero (train/distributed.py): a tracker that cannot open stops every rank, not rank 0 alone
        dist.on_rank_zero(lambda: self.trackers.extend(
            open_trackers(config.report_to, self.out, asdict(config), first_step + 1)))
        self.bar = Progress("train", total, unit="step", initial=first_step, enabled=self.rank == 0)

    def step(self, record: dict) -> None:
        if self.rank != 0:
            return
        append_jsonl(self.out / "log.jsonl", [record])
        step = record["step"]
        if step % self.config.log_every == 0 or step == self.total:
            self.bar.write(f"step {step}/{self.total} loss {record['loss']:.4f} lr {record['lr']:.2e} "
                           f"{record['target_tokens_per_s']:.0f} target tok/s")
        self.bar.note(f"loss={record['loss']:.4f}")
        self.bar.update()
        log_all(self.trackers, {m: float(record[k]) for k, m in STEP_METRICS.items() if record.get(k) is not None}, step)

    def end(self, summary: dict) -> None:
        if self.rank != 0:
            return
        write_json(self.out / "train_summary.json", summary)
        summary_all(self.trackers, {"train/seconds": summary["seconds_this_run"],
                                    "train/examples": summary["examples"]}, self.total)

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
        close_all(self.trackers)


def report_evaluation(config: Any, rows: list[dict]) -> None:
    """A driver's evaluation of the trained model (`evaluate`'s rows) into the training's runs, at its last step;
    nothing without report_to."""
    if not config.report_to:
        return
    import orjson

    step = orjson.loads((config.out_dir / "train_summary.json").read_bytes())["steps"]
    trackers = open_trackers(config.report_to, config.out_dir, asdict(config), step + 1)
    try:
        summary_all(trackers, {f"eval/{r['task']}-{r['split']}/accuracy": r["accuracy"] for r in rows}, step)
    finally:
        close_all(trackers)
