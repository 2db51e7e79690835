"""Datasets for the offline task YAMLs in cart/evaluation/benchmarks/tasks/.

Each YAML names one of the `custom_dataset` functions below. lm-eval calls it with the task
metadata, which cart.evaluation.benchmarks.task_manager() sets to {"source": "builtin"|"local",
"local_dir": <folder>}; it returns a datasets.DatasetDict in the layout of the hub dataset that
lm-eval's built-in task reads, so the prompt/choice/target templates copied from the built-in
YAMLs apply unchanged.

Local files (cart/evaluation/benchmarks/spec.py lists the file names and each format) are
read as published by the benchmark authors and converted to the hub layout the same way the hub
datasets' own loading scripts do (ARC: question.stem -> question, choices -> {text, label};
PIQA: valid.jsonl + valid-labels.lst -> label; HellaSwag's llama.cpp text format -> release records).
"""
from __future__ import annotations

import bz2
import json
import re
from pathlib import Path

from . import smoke
from .spec import EVAL_SPLIT, FORMATS, LOCAL_FILES, BenchmarkFileError, find_local_file, piqa_labels_path


# ---- lm-eval's own preprocessing for HellaSwag, copied from lm_eval/tasks/hellaswag/utils.py ----
# (tests/test_harness.py checks it against the installed harness on real and generated items)

def _hellaswag_preprocess(text):
    text = text.strip()
    # NOTE: Brackets are artifacts of the WikiHow dataset portion of HellaSwag.
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_process_docs(dataset):
    def _process_doc(doc):
        ctx = doc["ctx_a"] + " " + doc["ctx_b"].capitalize()
        out_doc = {
            "query": _hellaswag_preprocess(doc["activity_label"] + ": " + ctx),
            "choices": [_hellaswag_preprocess(ending) for ending in doc["endings"]],
            "gold": int(doc["label"]),
        }
        return out_doc

    return dataset.map(_process_doc)


# ---- custom_dataset entry points (one per task YAML) ----

def hellaswag(**metadata):
    return load("hellaswag", **metadata)


def arc_challenge(**metadata):
    return load("arc_challenge", **metadata)


def lambada_openai(**metadata):
    return load("lambada_openai", **metadata)


def piqa(**metadata):
    return load("piqa", **metadata)


def load(task: str, source: str | None = None, local_dir: str | None = None, **_ignored):
    """DatasetDict for `task` from the builtin smoke set or from `local_dir`."""
    import datasets

    if source == "builtin":
        splits = smoke.generate(task)
    elif source == "local":
        if not local_dir:
            raise ValueError(f"{task}: source 'local' needs benchmarks.local_dir (a folder of benchmark files)")
        found = read_local(task, Path(local_dir))
        # lm-eval reads the training split a task YAML declares even at 0 shots (it builds the few-shot
        # sampler with the task), so a split without a file is an empty one; few-shot examples from it are
        # refused before that (check_local_files: the pipeline's task_specs, cart.evaluation.lm_eval_cli)
        splits = {split: found.get(split, []) for split in LOCAL_FILES[task]}
    else:
        raise ValueError(f"{task}: the cart task YAMLs need metadata source 'builtin' or 'local', got {source!r} "
                         f"(--metadata '{{\"source\": \"local\", \"local_dir\": ...}}' on lm-eval's command "
                         f"line; in Python, the TaskManager of cart.evaluation.benchmarks.task_manager)")
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def read_local(task: str, local_dir: Path) -> dict[str, list[dict]]:
    """{split: records in hub layout} for every split of `task` whose file exists under local_dir;
    the evaluation split is required."""
    out = {}
    for split in LOCAL_FILES[task]:
        path = find_local_file(local_dir, task, split, required=split == EVAL_SPLIT[task])
        if path is not None:
            out[split] = _READERS[task](path, task, split)
    return out


def _jsonl(path: Path, task: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkFileError(f"{path}:{n}: not valid JSON ({e}); expected {FORMATS[task]}") from None
    if not rows:
        raise BenchmarkFileError(f"{path}: no records; expected {FORMATS[task]}")
    return rows


def _require(row: dict, keys: tuple[str, ...], path: Path, n: int, task: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise BenchmarkFileError(f"{path}: record {n} lacks {missing}; expected {FORMATS[task]}")


def _read_hellaswag(path: Path, task: str, split: str) -> list[dict]:
    if path.name.endswith((".txt", ".txt.bz2")):
        return _read_hellaswag_text(path, task)
    rows = _jsonl(path, task)
    for n, r in enumerate(rows, 1):
        _require(r, ("activity_label", "ctx_a", "ctx_b", "endings", "label"), path, n, task)
        r["label"] = str(r["label"])  # the hub dataset stores labels as strings
    return rows


def _read_hellaswag_text(path: Path, task: str) -> list[dict]:
    """Release-format records from llama.cpp's HellaSwag text format (plain, or .bz2).

    Each item is 6 lines: `activity_label + ": " + ctx` with ctx = ctx_a + " " + ctx_b (lm-eval's
    preprocessing already applied, ctx_b not capitalised), the label, and the 4 preprocessed endings.
    lm-eval's preprocessing runs again on these (it also drops the bracketed spans the rendering kept in
    14 lines of the full file, e.g. "[www.kiddio.org]"), and ctx is split again by
    split_hellaswag_context, so lm-eval builds the same query as from the original record (1000/1000 on
    the subset; see cart/evaluation/benchmarks/spec.py). What the format cannot give back is the leading space that
    lm-eval's preprocessing leaves on an ending that began with a WikiHow tag ("[title] ...").
    """
    with (bz2.open if path.suffix == ".bz2" else open)(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":  # the newline that ends the last line
        lines.pop()
    if not lines:
        raise BenchmarkFileError(f"{path}: no records; expected {FORMATS[task]}")
    rows = []
    for start in range(0, len(lines), 6):
        record = lines[start:start + 6]
        n = start + 1  # 1-based number of the record's first line
        # the label first: a line lost or added mid-file shows there, long before the end of the file
        if len(record) > 1 and record[1] not in ("0", "1", "2", "3"):
            raise BenchmarkFileError(f"{path}:{n + 1}: label {record[1]!r} is not 0, 1, 2 or 3 (the 2nd line of "
                                     f"the record starting at line {n}); expected {FORMATS[task]}")
        if len(record) != 6:
            raise BenchmarkFileError(f"{path}:{n}: the last record has {len(record)} of its 6 lines (the file has "
                                     f"{len(lines)} lines, not a multiple of 6); expected {FORMATS[task]}")
        header, label, *endings = record
        activity_label, sep, ctx = header.partition(": ")
        if not sep:
            raise BenchmarkFileError(f"{path}:{n}: {header[:60]!r} is not `activity_label: context` (the 1st "
                                     f"line of a record); expected {FORMATS[task]}")
        ctx_a, ctx_b = split_hellaswag_context(ctx)
        rows.append({"activity_label": activity_label, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": ctx,
                     "endings": endings, "label": label})
    return rows


def split_hellaswag_context(ctx: str) -> tuple[str, str]:
    """(ctx_a, ctx_b) of a HellaSwag context joined as ctx_a + " " + ctx_b (reconstructed).

    ActivityNet items end in ctx_b, the lower-case start of the sentence the endings complete
    ("A man is sitting on a roof. he"); WikiHow items have an empty ctx_b and end with a full stop.
    So a context ending in "." has no ctx_b, and otherwise ctx_b is what follows the last ". " (all of
    it when there is none). On the 1,000-item subset this gives back every original ctx_b.
    """
    if ctx.endswith("."):
        return ctx, ""
    ctx_a, sep, ctx_b = ctx.rpartition(". ")
    return ctx_a + sep.rstrip(), ctx_b


def _read_arc(path: Path, task: str, split: str) -> list[dict]:
    out = []
    for n, r in enumerate(_jsonl(path, task), 1):
        _require(r, ("id", "question", "answerKey"), path, n, task)
        q = r["question"]
        if isinstance(q, dict):  # AI2 release layout -> hub layout (as the ai2_arc loading script does)
            _require(q, ("stem", "choices"), path, n, task)
            choices = {"text": [c["text"] for c in q["choices"]], "label": [c["label"] for c in q["choices"]]}
            q = q["stem"]
        else:  # already hub layout
            _require(r, ("choices",), path, n, task)
            choices = {"text": list(r["choices"]["text"]), "label": list(r["choices"]["label"])}
        if r["answerKey"] not in choices["label"]:
            raise BenchmarkFileError(f"{path}: record {n}: answerKey {r['answerKey']!r} is not one of "
                                     f"the choice labels {choices['label']}")
        out.append({"id": r["id"], "question": q, "choices": choices, "answerKey": r["answerKey"]})
    return out


def _read_lambada(path: Path, task: str, split: str) -> list[dict]:
    rows = _jsonl(path, task)
    for n, r in enumerate(rows, 1):
        _require(r, ("text",), path, n, task)
    return [{"text": r["text"]} for r in rows]


def _read_piqa(path: Path, task: str, split: str) -> list[dict]:
    rows = _jsonl(path, task)
    for n, r in enumerate(rows, 1):
        _require(r, ("goal", "sol1", "sol2"), path, n, task)
    if all("label" in r for r in rows):
        labels = [r["label"] for r in rows]
    else:
        lpath = piqa_labels_path(path)
        if not lpath.is_file():
            raise BenchmarkFileError(f"missing benchmark file {lpath}: the labels for {path.name} "
                                     f"(records have no 'label' field); expected {FORMATS[task]}")
        labels = [line.strip() for line in lpath.read_text().splitlines() if line.strip()]
        if len(labels) != len(rows):
            raise BenchmarkFileError(f"{lpath}: {len(labels)} labels for {len(rows)} records in {path.name}")
    out = []
    for n, (r, lab) in enumerate(zip(rows, labels), 1):
        if str(lab) not in ("0", "1"):
            raise BenchmarkFileError(f"{path}: record {n}: label {lab!r} is not 0 or 1")
        out.append({"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(lab)})
    return out


_READERS = {"hellaswag": _read_hellaswag, "arc_challenge": _read_arc,
            "lambada_openai": _read_lambada, "piqa": _read_piqa}
