"""The fusion model's folder, as an object: what ``etalage fusion fit`` writes and every later stage
reads (submit, fusion predict, fusion report).

``fusion.lgb.txt`` (the LightGBM model, with its feature names), ``fusion.json`` (kind, features and
the settings that built the table: core run, training file, specialists, window sizes, TTA; paths
relative to the folder), ``table.npz`` (the training table, for the ablation), ``fit_report.json``,
and the fitting stages' outputs ``core_val/`` and ``specialists_val/``.
"""

from __future__ import annotations

from pathlib import Path

from etalage.files import Folder


class FusionDir(Folder):
    @property
    def model_file(self) -> Path:
        return self.path / "fusion.lgb.txt"

    @property
    def meta_file(self) -> Path:
        return self.path / "fusion.json"

    @property
    def table_file(self) -> Path:
        return self.path / "table.npz"

    @property
    def fit_report_file(self) -> Path:
        return self.path / "fit_report.json"

    @property
    def core_val(self) -> Path:
        return self.path / "core_val"

    @property
    def specialists_val(self) -> Path:
        return self.path / "specialists_val"

    @property
    def exists(self) -> bool:
        return self.model_file.exists() and self.meta_file.exists()
