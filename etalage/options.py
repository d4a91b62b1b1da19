"""The choices every command offers, in one torch-free place: the packages validate against these
lists and the CLI offers them, so a new choice is added once."""

PICTURE_POOLINGS = ("gate", "attention", "mean", "max", "prob-mean", "mosaic")  # how the core pools a product's pictures
SCHEDULES = ("cosine", "grow-batch")                                # core learning-rate schedules
TTA_MODES = ("none", "flip", "crops")                               # core test-time augmentation
RESIZE_MODES = ("letterbox", "stretch")                             # a non-square picture -> the core's square
AUGMENTATIONS = ("crop-flip", "resized-crop", "trivial", "randaugment", "none")  # core training augmentation
KEEP_CHOICES = ("last", "best")                                     # the weights a core run keeps
OCR_ENGINES = ("easyocr", "ensemble", "rapidocr", "tesseract")      # etalage.ocr.load_engine names
RUN_ENGINES = ("local", "ray")                                       # where submit, predict and ocr run
# The default reading (load_engine() without a name): engine and settings chosen by measurement on
# real book covers (benchmarks/bench_reading.py, docs/benchmarks.md "Reading real covers").
# PP-OCRv6 small (RapidOCR 3.10) on the picture upscaled 1.5x, then EasyOCR in one pass (CRAFT at 1x, crops of
# the 2x picture) adding the words PP-OCR missed, then the English lexicon's corrections: on 300 real book
# covers at 180x180, 0.545 of the title words against 0.321 for plain EasyOCR readtext and 0.490 with
# PP-OCRv4 (RapidOCR 1.4.4) in its place, which was 1.09x faster (benchmarks/results/reading_rapidocr3.json).
DEFAULT_OCR_ENGINE = "ensemble"
DEFAULT_READING: dict = {"members": [["rapidocr", {"scale": 1.5, "det_side": 400}],
                                     ["easyocr", {"scale": 2.0, "detect_scale": 1.0}]], "lexicon": True}
RERANKER_KINDS = ("ranker", "binary")                               # LightGBM objectives of the fusion model
FUSED_TOPK = 5                                                      # classes kept per product by fusion


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` when it is one of ``choices``, else a ``ConfigError`` listing them."""
    from etalage.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def parse_key_values(items: list[str], what: str) -> dict:
    """``["num_leaves=63", "learning_rate=0.05"]`` -> dict; values read as JSON when they parse, and Python's
    ``True``, ``False`` and ``None`` as theirs (else ``probe_init=False`` would be the string "False", which is
    true)."""
    import json

    from etalage.errors import ConfigError

    python = {"True": True, "False": False, "None": None}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{what} {item!r}: expected KEY=VALUE")
        try:
            out[key] = python[value] if value in python else json.loads(value)
        except ValueError:
            out[key] = value
    return out
