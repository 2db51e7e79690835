"""The builtin SMOKE SET: small generated items in each benchmark's own record format.

`source: builtin` (the default profile) evaluates these so that `dvc repro` runs offline
anywhere, with no data files. They exercise the exact code path of the real benchmarks (same
lm-eval task YAMLs, prompts, metrics and adapter), but they are NOT HellaSwag, ARC, LAMBADA or
PIQA: every row they produce is labelled `source: builtin` and must never be reported as a
benchmark result.

Records are generated in the layout of the Hugging Face hub datasets that lm-eval's built-in
tasks read (Rowan/hellaswag, allenai/ai2_arc, EleutherAI/lambada_openai, baber/piqa), so the
task YAMLs treat them exactly as they treat real data. Generation is deterministic (fixed seeds).
"""
from __future__ import annotations

import random

SPLIT_SIZES = {"train": 16, "validation": 40, "test": 40}

_NAMES = ["Tom", "Anna", "Ben", "Lily", "Sam", "Mia", "Max", "Zoe", "Leo", "Ella"]
_OBJECTS = ["ball", "cup", "book", "kite", "hat", "box", "drum", "boat", "cake", "lamp"]
_COLORS = ["red", "blue", "green", "yellow", "small", "big", "old", "new"]
_PLACES = ["garden", "kitchen", "park", "school", "forest", "house"]
_CATEGORIES = {
    "fruit": ["apple", "banana", "pear", "plum", "grape"],
    "animal": ["dog", "cat", "horse", "bird", "cow"],
    "tool": ["hammer", "saw", "drill", "wrench", "shovel"],
    "drink": ["water", "milk", "tea", "juice", "coffee"],
}
_PIQA = [  # (goal, sensible solution, silly solution)
    ("To dry wet hands,", "rub them with a clean towel.", "rub them with a wet sponge."),
    ("To keep milk cold,", "put it in the fridge.", "put it in the oven."),
    ("To cut paper,", "use a pair of scissors.", "use a spoon."),
    ("To light a dark room,", "turn on the lamp.", "close the curtains."),
    ("To carry water,", "fill a bucket with it.", "fill a net with it."),
    ("To warm up in winter,", "put on a thick coat.", "put on wet socks."),
    ("To clean a dirty plate,", "wash it with soap and water.", "wash it with mud."),
    ("To open a locked door,", "turn the key in the lock.", "turn the lamp in the lock."),
]


def _a(word: str) -> str:
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _hellaswag(rnd: random.Random, i: int, split: str) -> dict:
    """The right ending names the object the context introduced; the three others, of the same
    shape and length, name other objects (a copy-from-context skill, not world knowledge)."""
    name, obj, color, place = rnd.choice(_NAMES), rnd.choice(_OBJECTS), rnd.choice(_COLORS), rnd.choice(_PLACES)
    verb = rnd.choice(["picks up", "looks at", "points at", "paints"])
    others = rnd.sample([(c, o) for c in _COLORS for o in _OBJECTS if o != obj], 3)
    endings = [f"{verb} the {c} {o} and smiles." for c, o in [(color, obj), *others]]
    gold = endings[0]
    rnd.shuffle(endings)
    ctx_a = f"{name} walks into the {place} and sees {_a(color)} {obj}."
    ctx_b = name.lower()
    return {"ind": i, "activity_label": f"Playing with {_a(obj)}", "ctx_a": ctx_a, "ctx_b": ctx_b,
            "ctx": f"{ctx_a} {ctx_b}", "endings": endings, "source_id": f"smoke~{split}~{i}",
            "split": split, "split_type": "indomain", "label": str(endings.index(gold))}


def _arc(rnd: random.Random, i: int, split: str) -> dict:
    cat = rnd.choice(sorted(_CATEGORIES))
    answer = rnd.choice(_CATEGORIES[cat])
    distractors = rnd.sample([w for c, ws in _CATEGORIES.items() if c != cat for w in ws], 3)
    texts = [answer] + distractors
    rnd.shuffle(texts)
    labels = ["A", "B", "C", "D"]
    return {"id": f"smoke_{split}_{i}", "question": f"Which of these is {_a(cat)}?",
            "choices": {"text": texts, "label": labels}, "answerKey": labels[texts.index(answer)]}


def _lambada(rnd: random.Random, i: int, split: str) -> dict:
    a, b = rnd.sample(_NAMES, 2)
    obj, place = rnd.choice(_OBJECTS), rnd.choice(_PLACES)
    text = (f"{a} and {b} went to the {place}. {a} had {_a(obj)}, and {b} wanted to hold it. "
            f"\"Can I hold your {obj}?\" asked {b}. \"Yes,\" said {a}, and gave the {obj} to {b}")
    return {"text": text}


def _piqa(rnd: random.Random, i: int, split: str) -> dict:
    goal, good, bad = rnd.choice(_PIQA)
    label = rnd.randrange(2)
    sol1, sol2 = (good, bad) if label == 0 else (bad, good)
    return {"goal": goal, "sol1": sol1, "sol2": sol2, "label": label}


# task -> (record generator, splits in the hub dataset lm-eval's built-in task reads, the key that
# must be unique within the task: no item repeats, so no item can be another's few-shot answer;
# PIQA has too few templates for that and keeps repeats)
_TASKS = {
    "hellaswag": (_hellaswag, ("train", "validation"), lambda r: r["ctx"]),
    "arc_challenge": (_arc, ("train", "validation", "test"), lambda r: (r["question"], *r["choices"]["text"])),
    "lambada_openai": (_lambada, ("test",), lambda r: r["text"]),
    "piqa": (_piqa, ("train", "validation"), None),
}


def generate(task: str) -> dict[str, list[dict]]:
    """{split: [record, ...]} for `task`, in the hub dataset's record layout."""
    if task not in _TASKS:
        raise ValueError(f"builtin smoke set: unknown task {task!r}; valid: {sorted(_TASKS)}")
    make, splits, key = _TASKS[task]
    out, seen = {}, set()
    for split in splits:
        rnd = random.Random(f"cart-smoke/{task}/{split}")
        rows = []
        while len(rows) < SPLIT_SIZES[split]:
            r = make(rnd, len(rows), split)
            if key is not None:
                if key(r) in seen:
                    continue
                seen.add(key(r))
            rows.append(r)
        out[split] = rows
    return out
