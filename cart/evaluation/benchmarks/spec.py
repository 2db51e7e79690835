"""What the offline benchmark tasks read: task names, splits and the expected local file layout.

Expected layout of `benchmarks.local_dir` (one folder per task; for each split the first file
name listed that exists is used; the evaluation split is required, the train split only for
few-shot evaluation):

    <local_dir>/hellaswag/hellaswag_val.jsonl        validation (evaluated)   [or hellaswag_val_full.txt,
                                                     hellaswag_val_full.txt.bz2, hellaswag_val_subset1000.jsonl]
    <local_dir>/hellaswag/hellaswag_train.jsonl      train (few-shot examples; optional)
    <local_dir>/arc_challenge/ARC-Challenge-Test.jsonl   test (evaluated)
    <local_dir>/arc_challenge/ARC-Challenge-Train.jsonl  train (few-shot examples)
    <local_dir>/arc_challenge/ARC-Challenge-Dev.jsonl    validation (optional, unused by the task)
    <local_dir>/lambada_openai/lambada_test.jsonl    test (evaluated; few-shot examples come from it too, as in lm-eval)
    <local_dir>/piqa/valid.jsonl + valid-labels.lst  validation (evaluated)
    <local_dir>/piqa/train.jsonl + train-labels.lst  train (few-shot examples; optional)

HellaSwag scores are only comparable with published ones on all 10,042 validation items: the official
hellaswag_val.jsonl, else llama.cpp's text rendering of it (hellaswag_val_full.txt, or its .bz2 which a
job can carry at a quarter of the size); the 1,000-item subset is the last resort. The text format keeps
`activity_label: ctx` where lm-eval reads ctx_a and ctx_b apart (it capitalises ctx_b), so the loader
splits ctx again (cart.evaluation.benchmarks.loaders.split_hellaswag_context). Measured on the 1,000-item subset
against its original records: the split and every lm-eval query agree in 1000/1000 items, labels and
endings in 1000/1000; the one residual difference is that lm-eval's preprocessing leaves a leading space
on an ending that began with a WikiHow tag ("[title] ...", "[substeps] ...") and the text format strips
it, so the choices differ by that one space in 59/1000 items (134/4000 endings; all of them WikiHow,
which is 87 of the subset's items but 6,799 of the full set's).
"""
from __future__ import annotations

from pathlib import Path

TASKS = ("hellaswag", "arc_challenge", "lambada_openai", "piqa")

# task -> split -> candidate file names under <local_dir>/<task>/ (first existing wins)
LOCAL_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "hellaswag": {"train": ("hellaswag_train.jsonl",),
                  "validation": ("hellaswag_val.jsonl", "hellaswag_val_full.txt", "hellaswag_val_full.txt.bz2",
                                 "hellaswag_val_subset1000.jsonl")},
    "arc_challenge": {"train": ("ARC-Challenge-Train.jsonl",), "validation": ("ARC-Challenge-Dev.jsonl",),
                      "test": ("ARC-Challenge-Test.jsonl",)},
    "lambada_openai": {"test": ("lambada_test.jsonl",)},
    "piqa": {"train": ("train.jsonl",), "validation": ("valid.jsonl",)},
}

# The split lm-eval's built-in task evaluates, and the split its default rule draws few-shot
# examples from (training_split if the task declares one, else validation, else test).
EVAL_SPLIT = {"hellaswag": "validation", "arc_challenge": "test", "lambada_openai": "test", "piqa": "validation"}
FEWSHOT_SPLIT = {"hellaswag": "train", "arc_challenge": "train", "lambada_openai": "test", "piqa": "train"}

FORMATS = {
    "hellaswag": "JSON Lines in the original HellaSwag release format (rowanz/hellaswag "
                 "hellaswag_val.jsonl), one object per line with at least activity_label, ctx_a, ctx_b, "
                 "endings (4 strings) and label (0-3); or, for the validation split, llama.cpp's HellaSwag "
                 "text format (klosax/hellaswag_text_data hellaswag_val_full.txt, plain or .bz2): 6 lines per "
                 "item, `activity_label: ctx` (preprocessed as lm-eval does, ctx_b not capitalised), the label "
                 "(0-3), then the 4 preprocessed endings",
    "arc_challenge": "JSON Lines in the AI2 ARC-V1-Feb2018 release format (ARC-Challenge-Test.jsonl), one "
                     "object per line: {\"id\", \"question\": {\"stem\", \"choices\": [{\"text\", \"label\"}, "
                     "...]}, \"answerKey\"}; the hub layout {\"id\", \"question\": str, \"choices\": "
                     "{\"text\": [...], \"label\": [...]}, \"answerKey\"} is accepted too",
    "lambada_openai": "JSON Lines, one {\"text\": passage} per line (OpenAI's detokenized LAMBADA test set, "
                      "lambada_test.jsonl); the last space-separated word is the target",
    "piqa": "JSON Lines in the original PIQA release format (valid.jsonl: {\"goal\", \"sol1\", \"sol2\"} per "
            "line) with the labels beside it in valid-labels.lst (one 0 or 1 per line, same order); records "
            "that carry their own \"label\" field need no labels file",
}


class BenchmarkFileError(FileNotFoundError):
    """A local benchmark file is missing or malformed; the message names it and its format."""


def find_local_file(local_dir: str | Path, task: str, split: str, required: bool) -> Path | None:
    """The file holding `split` of `task` under local_dir, or None (or an error when required)."""
    folder = Path(local_dir) / task
    names = LOCAL_FILES[task].get(split, ())
    for name in names:
        if (folder / name).is_file():
            return folder / name
    if not required:
        return None
    if not Path(local_dir).is_dir():
        raise BenchmarkFileError(f"benchmarks.local_dir {local_dir} is not a folder (expected one sub-folder "
                                 f"per task: {', '.join(TASKS)})")
    alt = f" (or {', '.join(names[1:])})" if len(names) > 1 else ""
    raise BenchmarkFileError(f"missing benchmark file {folder / names[0]}{alt}: the {task} {split} split; "
                             f"expected {FORMATS[task]}")


def piqa_labels_path(jsonl: Path) -> Path:
    """valid.jsonl -> valid-labels.lst (the PIQA release's naming)."""
    return jsonl.with_name(f"{jsonl.stem}-labels.lst")
