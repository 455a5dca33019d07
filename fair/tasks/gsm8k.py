"""GSM8K (Cobbe et al. 2021): grade-school maths word problems; the answer is the number after `####`."""

from fair.errors import FairError
from fair.tasks import Example, Task, require_field
from fair.tasks._common import number_prompt, number_text, question_only, read_split_jsonl


def to_example(row: dict, split: str, index: int) -> Example:
    where = f"gsm8k {split} row {index}"
    solution = require_field(row, "answer", where)
    if "####" not in solution:
        raise FairError(f"{where}: field 'answer' has no '#### <number>' line")
    return Example(
        id=f"{split}-{index}",
        index=index,
        split=split,
        question=require_field(row, "question", where).strip(),
        gold=number_text(solution.rsplit("####", 1)[1], where),
        solution=solution.strip(),
    )


TASK = Task(
    name="gsm8k",
    hub_id="openai/gsm8k",
    hub_config="main",
    answer_type="number",
    splits=("train", "test"),
    read_local=read_split_jsonl,
    to_example=to_example,
    prompt=number_prompt,
    paper_prompt=question_only,
    solution_form="worked",
    paper_gold=lambda ex: ex.solution,  # the whole solution, ending in "#### <number>"
    paper_hint=lambda ex: ex.solution.split("####")[1].strip() if "####" in ex.solution else ex.gold,
)
