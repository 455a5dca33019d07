"""SVAMP (Patel et al. 2021): one- and two-step arithmetic word problems with distracting variations."""

from fair.tasks import Example, Task, require_field
from fair.tasks._common import number_prompt, number_text, question_only, read_split_jsonl


def to_example(row: dict, split: str, index: int) -> Example:
    where = f"svamp {split} row {index}"
    # The hub copy carries `question_concat`; the original release has Body and Question apart.
    question = row.get("question_concat") or (
        f"{require_field(row, 'Body', where).strip()} {require_field(row, 'Question', where).strip()}"
    )
    return Example(
        id=str(require_field(row, "ID", where)),
        index=index,
        split=split,
        question=question.strip(),
        gold=number_text(require_field(row, "Answer", where), where),
        solution=str(row.get("Equation", "")).strip(),
    )


TASK = Task(
    name="svamp",
    hub_id="ChilleD/SVAMP",
    answer_type="number",
    splits=("train", "test"),
    read_local=read_split_jsonl,
    to_example=to_example,
    prompt=number_prompt,
    paper_prompt=question_only,
    solution_form="equation",
)
