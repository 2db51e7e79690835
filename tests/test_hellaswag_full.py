"""HellaSwag's full validation set in llama.cpp's text format (hellaswag_val_full.txt[.bz2]): parsing,
errors on malformed files, and agreement with the original records of the 1,000-item subset."""
import bz2
import json
from pathlib import Path

import pytest

from cart.evaluation.benchmarks.loaders import _hellaswag_preprocess, hellaswag_process_docs, read_local
from cart.evaluation.benchmarks.spec import BenchmarkFileError, find_local_file

SHARED_BENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "benchmarks"

# Three items as llama.cpp's text format writes them: an ActivityNet one (ctx_b "he" follows the last
# sentence), a WikiHow one (empty ctx_b: the context ends with a full stop) and one without any ". "
SYNTHETIC = """Roof shingle removal: A man is sitting on a roof. He looks around. he
3
is using wrap to wrap a pair of skis.
is ripping level tiles off.
is holding a rubik's cube.
starts pulling up roofing on a roof.
Home and Garden: How to clean tile. Sweep the floor. Mop it: use warm water.
0
Let it dry.
Paint it red.
Eat the mop.
Sell the house.
Camel ride: a man rides a camel
1
across the dunes.
into a shop.
under the sea.
over the moon.
"""


def _process(rows):
    import datasets

    return hellaswag_process_docs(datasets.Dataset.from_list(rows)).to_list()


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / "hellaswag" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".bz2"):
        path.write_bytes(bz2.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_text_format_becomes_release_records(tmp_path):
    _write(tmp_path, "hellaswag_val_full.txt", SYNTHETIC)
    rows = read_local("hellaswag", tmp_path)["validation"]
    assert [(r["activity_label"], r["ctx_a"], r["ctx_b"], r["label"]) for r in rows] == [
        ("Roof shingle removal", "A man is sitting on a roof. He looks around.", "he", "3"),
        ("Home and Garden", "How to clean tile. Sweep the floor. Mop it: use warm water.", "", "0"),
        ("Camel ride", "", "a man rides a camel", "1")]
    assert rows[0]["endings"][3] == "starts pulling up roofing on a roof." and len(rows[2]["endings"]) == 4
    docs = _process(rows)
    assert [d["query"] for d in docs] == [
        "Roof shingle removal: A man is sitting on a roof. He looks around. He",
        "Home and Garden: How to clean tile. Sweep the floor. Mop it: use warm water.",
        "Camel ride: A man rides a camel"]
    assert docs[1]["choices"] == ["Let it dry.", "Paint it red.", "Eat the mop.", "Sell the house."]
    assert [d["gold"] for d in docs] == [3, 0, 1]


def test_bz2_reads_like_the_text_and_the_full_file_comes_before_the_subset(tmp_path):
    subset = _write(tmp_path, "hellaswag_val_subset1000.jsonl", "")
    assert find_local_file(tmp_path, "hellaswag", "validation", required=True) == subset
    packed = _write(tmp_path, "hellaswag_val_full.txt.bz2", SYNTHETIC)
    assert find_local_file(tmp_path, "hellaswag", "validation", required=True) == packed
    from_bz2 = read_local("hellaswag", tmp_path)["validation"]
    plain = _write(tmp_path, "hellaswag_val_full.txt", SYNTHETIC)
    assert find_local_file(tmp_path, "hellaswag", "validation", required=True) == plain
    assert read_local("hellaswag", tmp_path)["validation"] == from_bz2 and len(from_bz2) == 3
    official = _write(tmp_path, "hellaswag_val.jsonl", "")
    assert find_local_file(tmp_path, "hellaswag", "validation", required=True) == official


@pytest.mark.parametrize("text, where, what", [
    pytest.param("\n".join(SYNTHETIC.splitlines()[:-1]) + "\n", ":13:", "the last record has 5 of its 6 lines",
                 id="short"),
    pytest.param(SYNTHETIC.replace("\n0\n", "\nzero\n"), ":8:", "label 'zero' is not 0, 1, 2 or 3", id="word"),
    pytest.param(SYNTHETIC.replace("\n1\n", "\n4\n"), ":14:", "label '4' is not 0, 1, 2 or 3", id="range"),
    # a lost line shifts the next record: its label line then holds its first ending
    pytest.param(SYNTHETIC.replace("Paint it red.\n", ""), ":14:", "label 'across the dunes.' is not",
                 id="lost-line"),
    pytest.param(SYNTHETIC.replace("Camel ride: a man", "Camel ride a man"), ":13:",
                 "is not `activity_label: context`", id="header"),
    pytest.param("", "", "no records", id="empty"),
])
def test_malformed_text_file_names_file_and_line(tmp_path, text, where, what):
    path = _write(tmp_path, "hellaswag_val_full.txt", text)
    with pytest.raises(BenchmarkFileError) as err:
        read_local("hellaswag", tmp_path)
    assert str(err.value).startswith(f"{path}{where}") and what in str(err.value)
    assert "llama.cpp's HellaSwag text format" in str(err.value)


def test_full_file_agrees_with_the_subset_release_records(tmp_path):
    """Every subset item is in the full file with the same label and endings, and lm-eval builds the
    same query from both; the choices differ only by the leading space that lm-eval's preprocessing
    leaves on an ending that began with a WikiHow tag, which the text format strips."""
    folder = SHARED_BENCH / "hellaswag"
    if not (folder / "hellaswag_val_full.txt.bz2").is_file():
        pytest.skip(f"real benchmark files not found under {SHARED_BENCH}")
    full = read_local("hellaswag", SHARED_BENCH)["validation"]
    assert len(full) == 10042
    (tmp_path / "hellaswag").mkdir()
    (tmp_path / "hellaswag" / "hellaswag_val_full.txt.bz2").symlink_to(folder / "hellaswag_val_full.txt.bz2")
    assert read_local("hellaswag", tmp_path)["validation"] == full

    subset = [json.loads(line) for line in (folder / "hellaswag_val_subset1000.jsonl").read_text().splitlines()]
    for r in subset:
        r["label"] = str(r["label"])
    theirs = _process(subset)  # what lm-eval builds from the original records
    by_endings = {tuple(r["endings"]): r for r in full}
    assert len(by_endings) == len(full)  # the endings identify an item
    matched = []
    for orig, doc in zip(subset, theirs):
        r = by_endings[tuple(c.removeprefix(" ") for c in doc["choices"])]
        assert r["label"] == orig["label"]
        # the file's first line: lm-eval's preprocessing of the record before ctx_b is capitalised
        assert f"{r['activity_label']}: {r['ctx']}" == _hellaswag_preprocess(
            orig["activity_label"] + ": " + orig["ctx_a"] + " " + orig["ctx_b"])
        matched.append(r)
    ours = _process(matched)

    same_query = sum(o["query"] == t["query"] for o, t in zip(ours, theirs))
    same_choices = sum(o["choices"] == t["choices"] for o, t in zip(ours, theirs))
    assert same_query >= 1000
    assert same_choices >= 941
