"""Benchmarks: ``etalage.bench.covers`` (book and album covers: title, OCR, image and fused paths) is
the library behind ``etalage bench bookcover``; the ``bench_*.py`` scripts beside it measure speed and
quality against baselines run in the same process (results in ``benchmarks/results/``)."""
