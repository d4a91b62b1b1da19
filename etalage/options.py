"""The choices every command offers, in one torch-free place: the packages validate against these
lists and the CLI offers them, so a new choice is added once."""

PICTURE_FUSIONS = ("gate", "attention", "mean", "max", "prob-mean")  # how the core combines a product's pictures
SCHEDULES = ("cosine", "grow-batch")                                # core learning-rate schedules
TTA_MODES = ("none", "flip")                                        # core test-time augmentation
OCR_ENGINES = ("easyocr", "rapidocr", "tesseract")                  # etalage.ocr.load_engine names
DEFAULT_OCR_ENGINE = "easyocr"
RERANKER_KINDS = ("ranker", "binary")                               # LightGBM objectives of the fusion model
FUSED_TOPK = 5                                                      # classes kept per product by fusion


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """``value`` when it is one of ``choices``, else a ``ConfigError`` listing them."""
    from etalage.errors import ConfigError

    if value not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value
