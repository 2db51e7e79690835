"""Builtin text: what the corpus stage's `source: builtin` reads, so `dvc repro` works anywhere offline.

A seeded narrow-vocabulary story generator (the TinyStories role), and natural-language text shipped
with every Python install (the wikipedia role: the `pydoc_data` reference topics plus module and class
docstrings of the standard library; the fineweb_edu role: its function and method docstrings).
Smoke data: it exercises the pipeline and is never a result."""
from __future__ import annotations

import ast
import os
import random
import sys
import sysconfig
from pathlib import Path
from typing import Iterator


# ---------------------------------------------------------------------------------------------
# builtin text: a narrow-vocabulary story generator (the TinyStories role)
# ---------------------------------------------------------------------------------------------

_GIRLS = ["Lily", "Mia", "Anna", "Lucy", "Sue", "Ella", "Zoe", "Amy", "Kim", "Rose", "Sara", "Emma", "Jane",
          "Molly", "Daisy"]
_BOYS = ["Tom", "Ben", "Sam", "Max", "Tim", "Jack", "Leo", "Bob", "Dan", "Joe", "Finn", "Jake", "Ned", "Billy",
         "Pete"]
_ANIMALS = ["cat", "dog", "bunny", "bird", "fox", "bear", "duck", "frog", "mouse", "owl", "puppy", "kitten",
            "horse", "pig", "cow", "lion", "fish", "turtle", "sheep", "goat", "squirrel", "bee", "butterfly",
            "hen", "deer"]
_ADJ = ["little", "big", "happy", "kind", "brave", "shy", "silly", "small", "funny", "gentle", "curious",
        "sleepy", "clever", "friendly", "tiny", "proud", "quiet", "busy", "lucky", "good", "nice", "smart",
        "fast", "strong", "young"]
_COLORS = ["red", "blue", "green", "yellow", "pink", "purple", "orange", "white", "black", "brown", "shiny",
           "soft"]
_OBJECTS = ["ball", "kite", "box", "hat", "book", "toy", "cup", "boat", "car", "doll", "drum", "shoe", "key",
            "flower", "stick", "rock", "shell", "leaf", "cake", "apple", "balloon", "blanket", "bell",
            "basket", "star", "crayon", "truck", "spoon", "sock", "button"]
_PLACES = ["park", "garden", "forest", "house", "farm", "lake", "beach", "hill", "school", "town", "field",
           "river", "shop", "yard", "cave", "pond", "meadow", "village", "playground", "kitchen"]
_FOODS = ["apples", "cookies", "bread", "soup", "carrots", "berries", "cake", "cheese", "milk", "honey",
          "pie", "corn", "grapes", "candy", "eggs"]
_GOOD = ["happy", "glad", "excited", "proud", "calm", "warm", "safe", "thankful"]
_BAD = ["sad", "scared", "angry", "worried", "tired", "lonely", "upset", "sorry"]
_WEATHER = ["sunny", "rainy", "windy", "snowy", "cloudy", "warm", "cold", "bright"]
_ACTS = [("play", "played"), ("run", "ran"), ("jump", "jumped"), ("sing", "sang"), ("dance", "danced"),
         ("swim", "swam"), ("read", "read"), ("draw", "drew"), ("climb", "climbed"), ("build", "built"),
         ("paint", "painted"), ("dig", "dug"), ("skip", "skipped"), ("hide", "hid"), ("bake", "baked")]
_RELATIVES = ["mom", "dad", "grandma", "grandpa", "sister", "brother", "aunt", "teacher"]

_OPEN = ["Once upon a time, there was a {adj} {animal} named {name}.",
         "Once upon a time, in a {adj2} {place}, there lived a {animal} named {name}.",
         "One day, a {adj} {kid} named {name} went to the {place}.",
         "There was once a {adj} {kid} called {name}.",
         "{name} was a {adj} {animal} who lived near the {place}."]
_SETTING = ["{He} liked to {act} with {his} {relative} every day.",
            "{He} had a {color} {obj} that {he} loved very much.",
            "Every morning, {name} ate {food} for breakfast.",
            "{He} lived in a {adj2} house with a {color} door.",
            "{name} liked the {place} because it was {adj2} and {weather2}.",
            "{His} best friend was a {adj2} {animal2} named {friend}.",
            "{name} always wanted to {act} like the big kids."]
_EVENT = ["One {weather} day, {name} found a {color} {obj} under a tree.",
          "One day, {name} saw a {adj2} {animal2} by the {place2}.",
          "One morning, {his} {relative} said, \"Let's go to the {place2} today!\"",
          "One {weather} afternoon, {name} and {friend} went to {act} at the {place2}.",
          "Then {name} heard a {adj2} noise coming from the {place2}.",
          "Later that day, {name} wanted to {act} with {his} {obj}."]
_PROBLEM = ["But then, the {obj} fell into the water and {name} felt {bad}.",
            "Suddenly, it started to rain, and {name} could not find {his} {obj}.",
            "But {friend} wanted the {obj} too, and they began to fight.",
            "{name} tried to {act}, but it was too hard and {he} felt {bad}.",
            "But the {animal2} was {bad} because it was lost and could not find its home.",
            "Oh no! The {obj} was broken, and {name} started to cry."]
_TALK = ["\"Can you help me?\" asked {name}.",
         "\"Don't be {bad},\" said {friend}. \"I will help you.\"",
         "\"Thank you!\" said {name} with a big smile.",
         "\"Let's {act} together,\" said {friend}.",
         "\"Look at my {obj}!\" said {name}.",
         "\"I am sorry,\" said {name}. \"I will share with you.\""]
_FIX = ["{friend} came and helped {name} find the {obj}.",
        "{His} {relative} gave {him} a hug and fixed the {obj}.",
        "They worked together, and soon everything was fine again.",
        "{name} shared the {obj} with {friend}, and they both felt {good}.",
        "{name} was brave and tried again, and this time {he} did it!",
        "They took the {animal2} back to its home near the {place2}."]
_END = ["From that day on, {name} and {friend} were best friends.",
        "{name} learned that sharing makes everyone {good}.",
        "At the end of the day, {name} went home and ate {food} with {his} {relative}.",
        "{name} felt {good} and smiled all the way home.",
        "They played at the {place} until the sun went down.",
        "And {name} never forgot that special {weather} day."]


def _story(rng: random.Random) -> str:
    girl = rng.random() < 0.5
    name = rng.choice(_GIRLS if girl else _BOYS)
    friend = rng.choice([n for n in (_BOYS if girl else _GIRLS)])
    act = rng.choice(_ACTS)
    slots = {
        "name": name, "friend": friend, "kid": "girl" if girl else "boy",
        "He": "She" if girl else "He", "he": "she" if girl else "he", "His": "Her" if girl else "His",
        "his": "her" if girl else "his", "him": "her" if girl else "him",
        "adj": rng.choice(_ADJ), "adj2": rng.choice(_ADJ), "animal": rng.choice(_ANIMALS),
        "animal2": rng.choice(_ANIMALS), "color": rng.choice(_COLORS), "obj": rng.choice(_OBJECTS),
        "place": rng.choice(_PLACES), "place2": rng.choice(_PLACES), "food": rng.choice(_FOODS),
        "good": rng.choice(_GOOD), "bad": rng.choice(_BAD), "weather": rng.choice(_WEATHER),
        "weather2": rng.choice(_WEATHER), "act": act[0], "acted": act[1], "relative": rng.choice(_RELATIVES),
    }
    parts = [[rng.choice(_OPEN)] + rng.sample(_SETTING, rng.randint(1, 3))]
    for _ in range(rng.randint(1, 2)):
        parts.append([rng.choice(_EVENT), rng.choice(_PROBLEM)] + rng.sample(_TALK, rng.randint(0, 2))
                     + [rng.choice(_FIX)])
    parts.append(rng.sample(_END, rng.randint(1, 2)))
    paragraphs = [" ".join(s.format(**slots) for s in p) for p in parts]
    # TinyStories style: paragraphs separated by blank lines, sometimes run together
    out = paragraphs[0]
    for p in paragraphs[1:]:
        out += ("\n\n" if rng.random() < 0.6 else " ") + p
    return out


def generate_stories(seed: int) -> Iterator[str]:
    """An endless, seeded stream of simple stories over a few hundred words of vocabulary."""
    rng = random.Random(f"cart-stories:{seed}")
    while True:
        yield _story(rng)


# ---------------------------------------------------------------------------------------------
# builtin text: documentation that ships with Python (the wikipedia and fineweb_edu roles)
# ---------------------------------------------------------------------------------------------

_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "dist-packages", "turtledemo", "encodings",
                "__pycache__", "__phello__"}
_MIN_WORDS = 8
_stdlib_cache: dict[str, list[str]] | None = None


def stdlib_documents() -> dict[str, list[str]]:
    """Natural-language text from the running Python's standard library, split into two roles.

    wikipedia: the `pydoc_data` reference topics (the language reference, as `help()` shows it),
    then module and class docstrings; fineweb_edu: function and method docstrings. Sources are
    parsed with `ast` (nothing is imported); files in sorted path order; docstrings shorter than
    8 words are dropped. Deterministic for a given Python version (recorded in the manifest)."""
    global _stdlib_cache
    if _stdlib_cache is not None:
        return _stdlib_cache
    wiki: list[str] = []
    edu: list[str] = []
    try:
        from pydoc_data.topics import topics
        wiki.extend(topics[k] for k in sorted(topics))
    except ImportError:  # some distributions package pydoc_data separately
        pass
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP)
        files.extend(str(Path(dirpath, f)) for f in filenames if f.endswith(".py"))
    files.sort()
    workers = max(1, min(4, os.cpu_count() or 1))
    if workers > 1:  # parsing ~10 MB of source is the slow part; results stay in file order
        import multiprocessing as mp
        with mp.get_context("fork" if sys.platform == "linux" else "spawn").Pool(workers) as pool:
            per_file = pool.map(_file_docstrings, files, chunksize=16)
    else:
        per_file = [_file_docstrings(f) for f in files]
    for module_docs, function_docs in per_file:
        wiki.extend(module_docs)
        edu.extend(function_docs)
    _stdlib_cache = {"wikipedia": wiki, "fineweb_edu": edu}
    return _stdlib_cache


def _file_docstrings(path: str) -> tuple[list[str], list[str]]:
    """(module and class docstrings, function and method docstrings) of one source file."""
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (SyntaxError, ValueError, OSError):
        return [], []
    top, funcs = [], []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= _MIN_WORDS:
                (funcs if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else top).append(doc)
    return top, funcs
