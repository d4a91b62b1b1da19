"""The run folder of a trained core, as an object: every stage that reads or writes one goes through
``RunDir``, so its layout is written down once.

``config.json`` (the training settings), ``category_names.csv`` (the taxonomy the class indices refer
to), ``val_positions.npy`` (the held-out products: fusion trains on them), ``metrics.jsonl`` (one line
per validation), ``curves.png`` (its chart), ``checkpoint.pt`` (resume state), ``best.pt`` (with ``--keep
best``) and, once finished, ``model.pt``. While a run with frozen layer groups trains, ``frozen_maps.npy`` and
``frozen_maps.npz`` hold their outputs (``etalage.core.mapcache``), deleted when it finishes. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from etalage.catalog.taxonomy import Taxonomy
from etalage.errors import ConfigError, StageOutputError
from etalage.files import Folder, atomic_write


class RunDir(Folder):
    # -- files -----------------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    @property
    def taxonomy_file(self) -> Path:
        return self.path / "category_names.csv"

    @property
    def val_file(self) -> Path:
        return self.path / "val_positions.npy"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_file(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def model_file(self) -> Path:
        return self.path / "model.pt"

    @property
    def best_file(self) -> Path:
        """The best validation weights so far (``--keep best``), model.pt's format; becomes model.pt."""
        return self.path / "best.pt"

    @property
    def curves_file(self) -> Path:
        """Training loss and validation top-1 per level over the run, redrawn at every validation."""
        return self.path / "curves.png"

    @property
    def map_cache_file(self) -> Path:
        """The frozen layer groups' output per training picture and view (float16, memory-mapped)."""
        return self.path / "frozen_maps.npy"

    @property
    def map_cache_state_file(self) -> Path:
        """What ``map_cache_file`` was made from and which of its maps are filled (saved at checkpoints)."""
        return self.path / "frozen_maps.npz"

    # -- reading ---------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        return self.model_file.exists()

    def require_model(self) -> Path:
        """``model.pt``, or a ``ConfigError`` saying how to make it."""
        if not self.model_file.exists():
            hint = " (the run is unfinished: continue it with `etalage train --resume`)" if \
                self.checkpoint_file.exists() else ""
            raise ConfigError(f"{self.model_file}: no trained model; run `etalage train --out {self.path}` first{hint}")
        return self.model_file

    def taxonomy(self) -> Taxonomy:
        if not self.taxonomy_file.exists():
            raise StageOutputError(f"{self.taxonomy_file}: not found; is {self.path} a run of `etalage train`?")
        return Taxonomy.load(self.taxonomy_file)

    def val_positions(self) -> np.ndarray:
        """The held-out products' positions in the training file (int64, ascending)."""
        if not self.val_file.exists():
            raise StageOutputError(f"{self.val_file}: not found; is {self.path} a run of `etalage train` "
                                   f"(with --val-fraction > 0: fusion trains on those products)?")
        return np.sort(np.load(self.val_file, allow_pickle=False).astype(np.int64))

    def config(self) -> dict:
        if not self.config_file.exists():
            raise StageOutputError(f"{self.config_file}: not found; is {self.path} a run of `etalage train`?")
        return json.loads(self.config_file.read_text())

    def metrics(self) -> list[dict]:
        """The lines of ``metrics.jsonl`` (one per evaluation), oldest first."""
        if not self.metrics_file.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_file.read_text().splitlines() if ln.strip()]

    def amend_last_metrics(self, extra: dict) -> None:
        """Add ``extra`` to the last line of ``metrics.jsonl`` (what the run's end decided about it), atomically."""
        lines = self.metrics()
        if not lines:
            return
        lines[-1].update(extra)
        with atomic_write(self.metrics_file, "w") as fh:
            fh.write("".join(json.dumps(line) + "\n" for line in lines))

    def last_metrics(self) -> dict:
        lines = self.metrics()
        return lines[-1] if lines else {}
