"""The single door to OCR engines (doctr's ``zoo``): a name and its options -> an engine, the default reading
when no name is given. Engines know nothing of each other or of this table; an ensemble's members are built
here and handed to it."""

from __future__ import annotations

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine
from etalage.options import DEFAULT_OCR_ENGINE, DEFAULT_READING, OCR_ENGINES


def _factory(name: str):
    """The constructor of the engine ``name`` (its module imported only now: EasyOCR pulls in torch)."""
    if name == "easyocr":
        from etalage.ocr.easyocr_engine import easyocr_engine

        return easyocr_engine
    if name == "rapidocr":
        from etalage.ocr.rapidocr_engine import RapidOcrEngine

        return RapidOcrEngine
    if name == "tesseract":
        from etalage.ocr.tesseract_engine import TesseractEngine

        return TesseractEngine
    raise ConfigError(f"unknown OCR engine {name!r}; known: {', '.join(OCR_ENGINES)}")


def _build(name: str, options: dict) -> OcrEngine:
    if name == "ensemble":
        from etalage.ocr.ensemble import DEFAULT_MEMBERS, EnsembleEngine

        members = [(str(n), dict(o or {})) for n, o in options.pop("members", DEFAULT_MEMBERS)]
        if options:
            raise ConfigError(f"OCR engine 'ensemble': bad options {sorted(options)} (it takes members)")
        if any(n == "ensemble" for n, _ in members):
            raise ConfigError(f"ensemble members must be one or more other engines, got {[n for n, _ in members]}")
        return EnsembleEngine([load_engine(n, **o) for n, o in members])
    factory = _factory(name)
    try:
        return factory(**options)
    except TypeError as exc:
        raise ConfigError(f"OCR engine {name!r}: bad options {sorted(options)} ({exc})") from None


def load_engine(name: str | None = None, lexicon: bool = False, **options) -> OcrEngine:
    """An OCR engine: ``"easyocr"``, ``"rapidocr"``, ``"tesseract"`` or ``"ensemble"`` (several engines' boxes
    merged); no name gives the default reading (``etalage.options.DEFAULT_OCR_ENGINE`` with its settings,
    chosen by measurement on real covers). ``lexicon``: add dictionary corrections of the words read
    (``etalage.ocr.lexicon``).

    >>> engine = load_engine()
    >>> boxes = engine.read([picture])[0]
    >>> " ".join(b.text for b in boxes)
    """
    if name is None:
        name, options = DEFAULT_OCR_ENGINE, {**DEFAULT_READING, **options}
        lexicon = lexicon or options.pop("lexicon", False)
    if name not in OCR_ENGINES:
        raise ConfigError(f"unknown OCR engine {name!r}; known: {', '.join(OCR_ENGINES)}")
    engine = _build(name, dict(options))
    return engine.use_lexicon() if lexicon else engine
