"""StrategyQA (Geva et al. 2021): yes/no questions that need implicit multi-step reasoning."""

from fair.errors import FairError
from fair.tasks import PAPER_YES_NO, Example, Task, require_field
from fair.tasks._common import answer_instruction, read_split_jsonl


def to_example(row: dict, split: str, index: int) -> Example:
    where = f"strategyqa {split} row {index}"
    answer = row.get("answer")
    if not isinstance(answer, bool):
        raise FairError(f"{where}: field 'answer' must be true or false, got {answer!r}")
    return Example(
        id=str(require_field(row, "qid", where)),
        index=index,
        split=split,
        question=require_field(row, "question", where).strip(),
        gold="yes" if answer else "no",
        solution=str(row.get("facts", "")).strip(),
    )


# The paper's prompt, verbatim (all_prompts.py): it asks for "true"/"false" first.
PAPER_PROMPT = """
Questions: {}
Let's think step by step. First, you should answer "true" or "false". Then, you should explain how you drew this conclusion.
"""

TASK = Task(
    name="strategyqa",
    hub_id="ChilleD/StrategyQA",
    answer_type="yesno",
    splits=("train", "test"),
    read_local=read_split_jsonl,
    to_example=to_example,
    prompt=lambda ex: f"{ex.question}\n\n{answer_instruction('yesno')}",
    paper_prompt=lambda ex: PAPER_PROMPT.format(ex.question),
    solution_form="facts",
    aliases=("strategyQA",),
    paper_gold=lambda ex: f"{PAPER_YES_NO[ex.gold]}.\t{ex.solution}",  # "true.\t<facts>"
    # Its data.py shows the gold field up to the TAB, "true.", so its hint reads "true..": kept for parity.
    paper_hint=lambda ex: f"{PAPER_YES_NO[ex.gold]}.",
    paper_instruction=('Answer the following question. Let\'s think step by step. First, you should answer "true" or '
                       '"false". Then, you should explain how you drew this conclusion.'),
    # The hub's row order differs from the export the paper's files were made from (shared/data/seed/PROVENANCE.md).
    paper_match_by_question=True,
)
