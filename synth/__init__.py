"""The synthetic catalogue: Cdiscount-shaped BSON dumps (with the answer key) for tests, benchmarks
and the demo, and the cover renderer it shares with the book-cover benchmark and OCR calibration.

Nothing here imports torch.
"""

from etalage.synth.catalogue import BOOKS, MUSIC, SynthConfig, default_taxonomy, write_synthetic_catalogue
from etalage.synth.covers import SIZE, draw_cover, render_cover

__all__ = ["BOOKS", "MUSIC", "SIZE", "SynthConfig", "default_taxonomy", "draw_cover", "render_cover",
           "write_synthetic_catalogue"]
