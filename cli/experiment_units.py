"""The experiment's units (cli/experiment.py runs them): what each trains on and where its data comes from.

A unit trains SmolLM2-135M-Instruct on one data recipe with the frozen budget (configs/train/experiment.yaml) and
evaluates it on the 300 SVAMP test questions. Its data:

    paper   the paper's published SVAMP files (../shared/data/seed)
    own     our loop: the offline committee on SmolLM2's own SVAMP train mistakes, in <work>/<corpus>/

Our loop's corpora share one mining: SmolLM2 answers the train split once, into <work>/own-corpus/ (in the
budget's dtype), and every other corpus folder starts from a copy of that mining's files, so each committee run
(its own filter and samples, its own cache) explains the same mistakes. A gold run's requests are its own: its
records say what they cost, whatever another folder's cache holds.

    own-corpus          filter review, 1 sample (own-fair, own-noreview)
    own-corpus-gold     filter gold, 1 sample: round 0's committee run again outside the loop (own-gold-bf16)
    own-corpus-k4-gold  filter gold, 4 samples a teacher at temperature 0.7 (own-k4-gold-bf16: trains on every
                        accepted sample)
    own-rounds          `fair loop`'s folder (cli/loop.py), filter gold: round r trains round r-1's student on
                        the mistakes it still makes on the train split (round 0: the untrained student's, the
                        shared mining). own-gold IS round 0 (the same data and model, not a rerun of it), so
                        own-rounds-r1 and -r2 compare with own-gold on the same seed; a round unit's data cost
                        is that of every round up to it (a reply an earlier round bought counts again).

Precision. Every unit trains and answers in the budget's dtype (float32) but those named `-bf16`, which train and
answer in bfloat16 (the mining they share stays float32, so they explain the same mistakes). docs/results.md compares
a unit only with units of its own dtype, and a -bf16 unit with its float32 twin where both exist (what bfloat16
alone changes). own-k4-gold's epoch, about 7 times own-gold's steps, does not fit a session here in float32
(docs/results/DISCUSSION.md, "Four samples"): it runs in bfloat16, beside own-gold's and base's bfloat16 twins.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass, field
from pathlib import Path

SHARED_MINING = "own-corpus"
MINING_FILES = ("answers.jsonl", "mistakes.jsonl", "stats.json", "config.yaml", "model_fingerprint")
ROUNDS = "own-rounds"
REVIEWED = {"filter": "review"}  # the shared corpus's committee: the paper's recipe, whatever the default
BF16 = "bfloat16"
GOLD = "mixed, gold check (no review)"


@dataclass(frozen=True)
class Unit:
    name: str
    source: str  # "paper", "own" or "none"
    description: str
    train: dict | None  # TrainConfig overrides on top of BUDGET; None: no training
    committee: dict = field(default_factory=dict)  # own: the committee's filter and samples over `fair gen`'s
    corpus: str = SHARED_MINING  # own: the committee's folder under --work
    round: int | None = None  # own: this unit is round r of the loop in <work>/own-rounds
    dtype: str | None = None  # training's and evaluation's; None: the budget's (configs/train/experiment.yaml)
    twin: str | None = None  # the unit this one repeats in another dtype (docs/results.md compares the two)

    def __post_init__(self):
        if self.dtype is not None and self.round is not None:
            raise ValueError(f"unit {self.name}: a round of the loop trains in the loop's dtype, the budget's")

    def corpora(self, work: Path) -> list[Path]:
        """The committee.jsonl files its data came from: every round's up to its own, for a round unit."""
        if self.round is not None:
            return [work / self.corpus / f"round{r}" / "committee.jsonl" for r in range(self.round + 1)]
        return [work / self.corpus / "committee.jsonl"]


def in_bf16(unit: Unit, **changes) -> Unit:
    """The unit's twin in bfloat16: the same data and budget, named `<unit>-bf16`."""
    return dataclasses.replace(unit, name=f"{unit.name}-bf16", dtype=BF16, twin=unit.name, **changes)


def share_mining(work: Path, folder: Path) -> None:
    """Start a corpus folder from the shared mining's files (once: a folder that has answers keeps them)."""
    if (folder / "answers.jsonl").exists() or folder == work / SHARED_MINING:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name in MINING_FILES:
        if (work / SHARED_MINING / name).exists():
            shutil.copy2(work / SHARED_MINING / name, folder / name)


def _units() -> dict[str, Unit]:
    """In the order they run: one of each comparison first, then the other seeds."""
    fair, noreview = "FAIR: mixed, peer-reviewed, alpha 0.5", "mixed, no peer review"
    base = Unit("base", "none", "no training", None)
    units = [base, in_bf16(base),
             Unit("paper-fair-s0", "paper", fair, {"teacher": "mixed", "seed": 0}),
             Unit("paper-noreview-s0", "paper", noreview, {"teacher": "mixed", "filter": "none", "seed": 0}),
             # GPT-3.5, chosen before any test result: in the paper's file the most rationales that reach the gold
             # answer (267 of 387; Gemini 242, Mixtral 219) and that its peers score 3 or more (355; Mixtral 352,
             # Gemini 267). By the acceptance rule (a mean above 3) Mixtral has the most (319; GPT-3.5 286).
             Unit("paper-single-gpt", "paper", "single best teacher (GPT-3.5), raw", {"teacher": "gpt", "filter": "none"}),
             Unit("paper-alpha0", "paper", "FAIR with alpha 0 (rationales only)", {"teacher": "mixed", "alpha": 0.0}),
             Unit("paper-alpha1", "paper", "FAIR with alpha 1 (feedback only)", {"teacher": "mixed", "alpha": 1.0}),
             Unit("own-fair", "own", fair, {"teacher": "mixed"}, REVIEWED),
             Unit("own-noreview", "own", noreview, {"teacher": "mixed", "filter": "none"}, REVIEWED)]
    for seed in (1, 2):
        units += [Unit(f"paper-fair-s{seed}", "paper", fair, {"teacher": "mixed", "seed": seed}),
                  Unit(f"paper-noreview-s{seed}", "paper", noreview, {"teacher": "mixed", "filter": "none", "seed": seed})]
    # The recipes (docs/results.md, "Recipes"): which rationales to keep, and how many a mistake.
    recipes = [("gold", GOLD, {"teacher": "mixed", "filter": "gold"}),
               ("goldreview", "mixed, gold check + peer review", {"teacher": "mixed", "filter": "gold+review"}),
               ("all", "every teacher's texts, unfiltered", {"teacher": "all", "filter": "none"}),
               ("allgold", "every teacher's texts, gold check", {"teacher": "all", "filter": "gold"})]
    for seed in (0, 1, 2):
        units += [Unit(f"paper-{name}-s{seed}", "paper", description, train | {"seed": seed})
                  for name, description, train in recipes]
    return {u.name: u for u in units + own_recipes()}


def own_recipes() -> list[Unit]:
    """Our loop's recipes, one seed each (the module docstring says where each one's data comes from)."""
    gold = {"teacher": "mixed", "filter": "gold"}
    rounds = [Unit("own-gold", "own", f"{GOLD}; round 0 of own-rounds", gold,
                   {"filter": "gold"}, ROUNDS, 0)]
    rounds += [Unit(f"own-rounds-r{r}", "own", f"round {r}: mixed, gold check, on round {r - 1}'s student's "
                    "mistakes", gold, {"filter": "gold"}, ROUNDS, r) for r in (1, 2)]
    # Sampled at 0.7 (the offline teachers' YAML says 0: greedy), so that the 4 samples differ, as a user asking
    # for samples would set it; the simulator then draws each sample apart (docs/committee.md, samples).
    k4 = Unit("own-k4-gold-bf16", "own", "4 samples a teacher at temperature 0.7, every one that passes the gold "
              "check", {"teacher": "all", "filter": "gold"},
              {"filter": "gold", "samples": 4, "teacher_temperature": 0.7}, "own-corpus-k4-gold", dtype=BF16)
    # own-gold's data from its own committee run (the offline committee is deterministic at one sample), not the
    # loop's round 0, which trains in the loop's dtype.
    gold_bf16 = in_bf16(rounds[0], description=GOLD, corpus="own-corpus-gold", round=None)
    return [rounds[0], gold_bf16, k4, *rounds[1:]]


UNITS = _units()
