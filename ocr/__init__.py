"""OCR: EasyOCR (CRAFT + CRNN), RapidOCR (PP-OCRv6) and Tesseract behind ``load_engine``, per-picture
box features, and a cache keyed by picture MD5 so that specialists and re-runs never read a picture
twice."""

from etalage.ocr.base import OcrEngine
from etalage.ocr.boxes import TextBox
from etalage.ocr.zoo import load_engine

__all__ = ["OcrEngine", "TextBox", "load_engine"]
