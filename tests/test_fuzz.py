"""A seeded, bounded fuzz of the inputs a user hands etalage: a small valid BSON dump and its CSVs
(taxonomy, answer key, submission) mutated by bit flips, truncation, field type swaps, huge values and
broken encodings. Every case must end in success, or in exit status 1 with one line on stderr and no
traceback; and no command may leave a half-written file behind."""

import io
import random

import bson
import pytest
from PIL import Image

from etalage.cli import main

CASES_PER_KIND = 24


def _jpeg(colour) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _docs():
    return [{"_id": 10 + i, "imgs": [{"picture": _jpeg((40 * i, 20, 200 - 30 * i))} for _ in range(1 + i % 3)],
             "category_id": 1000 + i % 2} for i in range(5)]


TAXONOMY = "category_id,category_level1,category_level2,category_level3\n1000,A,A1,X\n1001,B,B1,Y\n"
LABELS = "_id,category_id\n10,1000\n11,1001\n12,1000\n"
SUBMISSION = "_id,category_id\n10,1000\n11,1000\n12,1001\n"


def _bson_mutations(rng: random.Random):
    base = b"".join(bson.encode(d) for d in _docs())
    for _ in range(CASES_PER_KIND):  # bit flips
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield "flip", bytes(data)
    for _ in range(CASES_PER_KIND):  # truncation
        yield "truncate", base[:rng.randrange(len(base))]
    swaps = [("_id", "ten"), ("_id", 3.5), ("_id", None), ("category_id", "x"), ("category_id", 2**40),
             ("imgs", {"0": 1}), ("imgs", []), ("imgs", "pictures"), ("_id", 2**62)]
    for key, value in swaps:  # field type swaps and huge values
        docs = _docs()
        docs[rng.randrange(len(docs))][key] = value
        yield f"swap {key}", b"".join(bson.encode(d) for d in docs)
    docs = _docs()
    docs[1]["imgs"][0]["picture"] = "not bytes"
    yield "picture type", b"".join(bson.encode(d) for d in docs)
    yield "duplicate id", base + bson.encode(_docs()[0])
    yield "huge length", b"\xff\xff\xff\x7f" + base[4:]
    yield "garbage tail", base + bytes(rng.randrange(256) for _ in range(37))
    yield "empty", b""


def _csv_mutations(text: str, rng: random.Random):
    raw = text.encode()
    for _ in range(CASES_PER_KIND // 2):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        yield "flip", bytes(data)
    for _ in range(CASES_PER_KIND // 4):
        yield "truncate", raw[:rng.randrange(len(raw))]
    lines = text.splitlines()
    yield "bom", b"\xef\xbb\xbf" + raw
    yield "latin-1", text.replace("1000", "1000\xe9").encode("latin-1")
    yield "23 digits", (lines[0] + "\n" + lines[1].replace("1000", "12345678901234567890123") + "\n").encode()
    yield "header only", (lines[0] + "\n").encode()
    yield "negative", text.replace("1001", "-1001").encode()
    yield "extra column", (text.replace("\n", ",zz\n")).encode()
    yield "nul bytes", raw.replace(b",", b"\x00", 1)


def _check(capsys, argv, folder, label):
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("etalage: warning:")]
    assert code in (0, 1), (label, code, err)
    assert "Traceback" not in err, (label, err)
    if code == 1:
        assert len(lines) == 1 and lines[0].startswith("etalage "), (label, err)
    assert not list(folder.glob(".*.tmp")), (label, "a half-written file was left behind")
    return code


def test_fuzzed_dumps_and_csvs(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ETALAGE_CACHE_DIR", str(tmp_path / "cache"))
    rng = random.Random(20261126)
    outcomes = {0: 0, 1: 0}
    for n, (label, data) in enumerate(_bson_mutations(rng)):
        folder = tmp_path / f"b{n}"
        folder.mkdir()
        dump = folder / "d.bson"
        dump.write_bytes(data)
        (folder / "category_names.csv").write_text(TAXONOMY)
        for argv in (["index", str(dump), "--md5", "--check-categories", "-q"], ["info", str(dump), "-q"]):
            outcomes[_check(capsys, argv, folder, f"bson {label} #{n} {argv[0]}")] += 1
    for kind, text in (("taxonomy", TAXONOMY), ("labels", LABELS), ("submission", SUBMISSION)):
        for n, (label, data) in enumerate(_csv_mutations(text, rng)):
            folder = tmp_path / f"{kind}{n}"
            folder.mkdir()
            files = {"taxonomy": TAXONOMY, "labels": LABELS, "submission": SUBMISSION}
            for name, content in files.items():
                (folder / f"{name}.csv").write_bytes(data if name == kind else content.encode())
            argv = ["score", "--submission", str(folder / "submission.csv"), "--labels", str(folder / "labels.csv"),
                    "--taxonomy", str(folder / "taxonomy.csv")]
            outcomes[_check(capsys, argv, folder, f"{kind} {label} #{n}")] += 1
    total = sum(outcomes.values())
    print(f"{total} fuzz cases: {outcomes[0]} succeeded, {outcomes[1]} refused in one line")
    assert total >= 150 and outcomes[1] >= 50 and outcomes[0] >= 10


@pytest.mark.parametrize("case", ["header only", "latin-1", "23 digits", "bom"])
def test_named_csv_cases(tmp_path, capsys, case):
    rng = random.Random(0)
    data = dict(_csv_mutations(LABELS, rng))[case]
    (tmp_path / "labels.csv").write_bytes(data)
    (tmp_path / "submission.csv").write_text(SUBMISSION)
    code = main(["score", "--submission", str(tmp_path / "submission.csv"), "--labels", str(tmp_path / "labels.csv")])
    err = capsys.readouterr().err
    expected = {"header only": "no products after the header", "latin-1": "line 2: not UTF-8 text",
                "23 digits": "line 2: category_id 12345678901234567890123 is out of range", "bom": None}[case]
    if expected is None:
        assert code == 0, err
    else:
        assert code == 1 and expected in err, err
