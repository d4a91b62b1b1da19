"""The fusion model's folder, as an object: what ``etalage fusion fit`` writes and every later stage
reads (submit, fusion predict, fusion report).

``fusion.lgb.txt`` (the LightGBM model, with its feature names), ``fusion.json`` (kind, features and,
under ``config``, the ``FusionPlan``: the settings that built the table, paths relative to the
folder), ``table.npz`` (the training table, for the ablation), ``fit_report.json``, and the fitting
stages' outputs ``core_val/`` and ``specialists_val/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from etalage.errors import ConfigError, StageOutputError
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
    def neighbours_dir(self) -> Path:
        """The embedding-neighbour indexes (one per run of the first core model) and the training
        embeddings they were built from."""
        return self.path / "neighbours"

    def neighbour_index(self, run: int) -> Path:
        return self.neighbours_dir / f"run{run}"

    @property
    def without_id(self) -> FusionDir:
        """The model fitted without the product-id features, beside the main one, where the training ids looked
        numbered category by category: prediction uses it where the test ids do not interleave with them."""
        return FusionDir(self.path / "without_id")

    @property
    def exists(self) -> bool:
        return self.model_file.exists() and self.meta_file.exists()

    def relative(self, path: str | Path | None) -> str | None:
        """A path as ``fusion.json`` stores it: relative to this folder, so the folders move together."""
        if path is None:
            return None
        return os.path.relpath(Path(path).resolve(), self.path.resolve())

    def resolve(self, stored: str | None, what: str, flag: str) -> Path | None:
        """A path ``fusion.json`` stores (relative to this folder, or absolute), checked: missing, it is a
        ``StageOutputError`` naming ``what`` it is and the ``flag`` that passes it instead."""
        if stored is None:
            return None
        path = Path(stored) if Path(stored).is_absolute() else (self.path / stored)
        if not path.exists():
            raise StageOutputError(f"{self.meta_file}: the {what} it was fitted with, {stored}, is not at {path}; "
                                   f"pass {flag} PATH")
        return path


@dataclass
class FusionPlan:
    """The settings that built the fusion model's training table (``fusion.json``'s ``config``), which
    prediction repeats so the table has the same columns: the core run(s), training file and fitted
    specialists (paths relative to the fusion folder: ``build`` makes them so, ``FusionDir.resolve``
    reads them back), the specialists used, the core's top-K and test-time augmentation, the id
    neighbours' window sizes, and the LightGBM settings asked for and chosen.

    ``runs``: the core models (a run, or a folder of fold runs) whose rankings the table starts from. One
    is stored under ``run`` as every ``fusion.json`` so far; several under ``runs``, with ``run_names``, the
    prefixes of their columns. ``neighbours``: embedding neighbours per product (0: that signal off).
    ``extra``: keys this version does not know, kept as read and written back."""

    runs: list[str]
    train: str | None
    specialists: str | None = None
    specialist_names: list[str] = field(default_factory=list)
    topk: int = 20
    tta: str = "none"
    ks: list[int] = field(default_factory=list)
    train_stamp: dict = field(default_factory=dict)
    lgb_params: dict = field(default_factory=dict)
    lgb_chosen: dict = field(default_factory=dict)
    run_names: list[str] = field(default_factory=list)   # each core model's column prefix (several runs)
    neighbours: int = 0                                  # embedding neighbours per product (0: none)
    id_interleave: float | None = None  # how fusion's own products' ids interleave with the training ids, where a
                                        # model without id features was fitted too (``id_interleave_share``)
    extra: dict = field(default_factory=dict)

    KNOWN = ("run", "runs", "train", "specialists", "specialist_names", "topk", "tta", "ks", "train_stamp",
             "lgb_params", "lgb_chosen", "run_names", "neighbours", "id_interleave")

    @classmethod
    def build(cls, folder: FusionDir, runs: list[str | Path], train: str | Path, specialists: str | Path | None,
              **settings) -> FusionPlan:
        """The plan of a model fitted into ``folder`` (paths given as they are, stored relative to it)."""
        return cls([folder.relative(r) for r in runs], folder.relative(train), folder.relative(specialists),
                   **settings)

    @property
    def run(self) -> str | None:
        """The one core run (as stored), None when none is stored."""
        if len(self.runs) > 1:
            raise ConfigError(f"this fusion model was fitted over {len(self.runs)} core runs "
                              f"({', '.join(self.runs)}); this etalage predicts with one")
        return self.runs[0] if self.runs else None

    def to_dict(self) -> dict:
        runs = {"run": self.runs[0]} if len(self.runs) == 1 else {"runs": list(self.runs)}
        return {**runs, "train": self.train, "specialists": self.specialists,
                "specialist_names": list(self.specialist_names), "topk": self.topk, "tta": self.tta,
                "ks": list(self.ks), "train_stamp": dict(self.train_stamp), "lgb_params": dict(self.lgb_params),
                "lgb_chosen": dict(self.lgb_chosen),
                **({"run_names": list(self.run_names)} if len(self.runs) > 1 else {}),
                **({"neighbours": self.neighbours} if self.neighbours else {}),
                **({"id_interleave": self.id_interleave} if self.id_interleave is not None else {}), **self.extra}

    @classmethod
    def from_dict(cls, cfg: dict, source: str | Path = "fusion.json") -> FusionPlan:
        """Read ``to_dict``'s form, and every earlier ``fusion.json`` (``run``, optional keys missing);
        ``topk`` and ``ks`` are needed (``StageOutputError`` naming ``source`` when absent)."""
        try:
            runs = cfg["runs"] if "runs" in cfg else ([cfg["run"]] if cfg.get("run") is not None else [])
            return cls([str(r) for r in runs], cfg.get("train"), cfg.get("specialists"),
                       list(cfg.get("specialist_names") or []), int(cfg["topk"]), cfg.get("tta") or "none",
                       [int(k) for k in cfg["ks"]], dict(cfg.get("train_stamp") or {}),
                       dict(cfg.get("lgb_params") or {}), dict(cfg.get("lgb_chosen") or {}),
                       [str(n) for n in cfg.get("run_names") or []], int(cfg.get("neighbours") or 0),
                       None if cfg.get("id_interleave") is None else float(cfg["id_interleave"]),
                       {k: v for k, v in cfg.items() if k not in cls.KNOWN})
        except (KeyError, TypeError, ValueError) as exc:
            raise StageOutputError(f"{source}: unreadable settings ({type(exc).__name__}: {exc}); refit with "
                                   f"`etalage fusion fit`") from None
