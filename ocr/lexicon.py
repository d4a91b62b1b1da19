"""Lexicon post-correction of what OCR read: each word that is not a dictionary word gets the
dictionary words it most likely is, as extra boxes beside the original.

Small cover letters come back with one or two letters wrong ("Mushropmn Panet", "LIkEIY"), run
together ("MONETARYECONOMICS": PP-OCR reads a line and often drops its spaces) or cut in two ("FINAN
CIAL": two boxes side by side). symspellpy (MIT) finds
the most frequent dictionary word within an edit distance of 1 (words under 6 letters) or 2, and splits
a run of letters into dictionary words. Nothing is replaced: the original box stays and the corrections
are added with half its confidence, so a word the dictionary lacks (a French title, a name) loses
nothing, and the specialists' character n-grams see both. The dictionary is symspellpy's English
frequency list (82,765 words), which ships in its wheel; French words are kept as read.
"""

from __future__ import annotations

import functools
import re

import numpy as np

from etalage.ocr.boxes import TextBox

VERSION = "symspell-en82765-v2"  # in the cache key of engines that use the lexicon: change it with the rules
MIN_LETTERS = 3        # shorter tokens are not corrected (too many near neighbours)
SEGMENT_FROM = 6       # runs of at least this many letters are tried as several words
SUGGESTIONS = 1        # dictionary words kept per misread token (the most frequent at the smallest distance)


@functools.cache
def _symspell():
    import importlib.resources

    from symspellpy import SymSpell

    sym = SymSpell(max_dictionary_edit_distance=2, prefix_length=7)
    path = importlib.resources.files("symspellpy") / "frequency_dictionary_en_82_765.txt"
    sym.load_dictionary(str(path), term_index=0, count_index=1, encoding="utf-8")
    return sym


def variants(text: str) -> list[str]:
    """Dictionary words ``text``'s tokens most likely are (none for tokens already in the dictionary)."""
    from symspellpy import Verbosity

    sym = _symspell()
    out: list[str] = []
    for token in re.findall(r"[A-Za-z]+", text):
        t = token.lower()
        if len(t) < MIN_LETTERS or t in sym.words:
            continue
        if len(t) >= SEGMENT_FROM:
            parts = sym.word_segmentation(t, max_edit_distance=0).corrected_string.split()
            if len(parts) > 1 and all(p in sym.words for p in parts):
                out.extend(p for p in parts if len(p) >= MIN_LETTERS)
        close = sym.lookup(t, Verbosity.CLOSEST, max_edit_distance=1 if len(t) < SEGMENT_FROM else 2)
        out.extend(c.term for c in close[:SUGGESTIONS])  # the most frequent of the closest words
    return list(dict.fromkeys(w for w in out if w != text.lower()))


def joined(boxes: list[TextBox]) -> list[TextBox]:
    """Dictionary words cut in two: neighbouring boxes on one line (their heights overlap by half, the
    gap between them under a letter's height) whose texts together make a dictionary word that neither
    half is."""
    sym = _symspell()
    out = []
    spans = [(float(b.quad[:, 0].min()), float(b.quad[:, 0].max()), float(b.quad[:, 1].min()),
              float(b.quad[:, 1].max())) for b in boxes]
    for i, (a, (ax0, ax1, ay0, ay1)) in enumerate(zip(boxes, spans, strict=True)):
        for j, (b, (bx0, bx1, by0, by1)) in enumerate(zip(boxes, spans, strict=True)):
            height = min(ay1 - ay0, by1 - by0)
            if i == j or height <= 0 or not 0 <= bx0 - ax1 < height:
                continue
            if min(ay1, by1) - max(ay0, by0) < 0.5 * height:
                continue
            left, right = re.findall(r"[A-Za-z]+", a.text), re.findall(r"[A-Za-z]+", b.text)
            if not left or not right:
                continue
            word = (left[-1] + right[0]).lower()
            if len(word) >= 5 and word in sym.words and not (left[-1].lower() in sym.words
                                                              and right[0].lower() in sym.words):
                quad = np.array([[ax0, min(ay0, by0)], [bx1, min(ay0, by0)], [bx1, max(ay1, by1)],
                                 [ax0, max(ay1, by1)]], np.float32)
                out.append(TextBox(word, 0.5 * min(a.confidence, b.confidence), quad, None))
    return out


def with_corrections(boxes: list[TextBox]) -> list[TextBox]:
    """``boxes`` plus one box per correction (same place, half the confidence, no features) and one per
    word cut in two."""
    extra = [TextBox(word, 0.5 * b.confidence, np.array(b.quad, np.float32), None)
             for b in boxes for word in variants(b.text)]
    return list(boxes) + extra + joined(boxes)


def dictionary_words(text: str) -> str:
    """The tokens of ``text`` (already lower-case) that are dictionary words of 3 or more letters: the
    reading with the OCR noise left out, for a sentence encoder that garbage would mislead."""
    words = _symspell().words
    return " ".join(w for w in text.split() if len(w) >= MIN_LETTERS and w in words)
