"""The work folder of a prediction job (``etalage submit``, ``etalage fusion predict``), as an object.

``work.json`` (the job it belongs to: data file and its stamp, fusion model, core run, chunk size: a
folder of another job is refused), ``core/`` (core predictions), ``specialists/NAME/`` (each
specialist's scores), ``core_runs/MODEL/runI/`` (each run's own predictions, when the fusion combines
several), ``fused/`` (fused top-5 per product): every stage's parts over the same chunks; once merged,
``fused.parquet`` (the fused ranking with category ids, for any Parquet reader).
"""

from __future__ import annotations

import json
from pathlib import Path

from etalage.catalog.bsonindex import file_stamp
from etalage.errors import StageOutputError
from etalage.files import Folder, claim_folder


class WorkDir(Folder):
    @classmethod
    def beside(cls, out: str | Path | None, data: str | Path) -> WorkDir:
        """The default: ``OUT_work`` beside the output file, else ``DATA.work``."""
        if out:
            return cls(Path(out).with_name(Path(out).stem + "_work"))
        return cls(Path(str(data) + ".work"))

    @property
    def stamp_file(self) -> Path:
        return self.path / "work.json"

    @property
    def core(self) -> Path:
        return self.path / "core"

    @property
    def core_runs(self) -> Path:
        """Each core run's own predictions, when a fusion combines several (``core/`` then holds their
        combination, what every later stage reads)."""
        return self.path / "core_runs"

    def core_run(self, model: str, run: int) -> Path:
        return self.core_runs / model / f"run{run}"

    @property
    def specialists(self) -> Path:
        return self.path / "specialists"

    def specialist(self, name: str) -> Path:
        return self.specialists / name

    @property
    def fused(self) -> Path:
        return self.path / "fused"

    @property
    def fused_parquet(self) -> Path:
        """The fused top-5 of every product in long form (written by the merge)."""
        return self.path / "fused.parquet"

    def claim(self, data: Path, model: str, run: str, chunk: int) -> None:
        """Stamp the folder for this job, or check it holds this job's outputs."""
        self.path.mkdir(parents=True, exist_ok=True)
        claim_folder(self.stamp_file, {"data": str(data), "data_stamp": file_stamp(data), "model": model,
                                       "run": run, "chunk": chunk})

    def job(self, command: str) -> dict:
        """The stamp of the job whose outputs the folder holds."""
        if not self.stamp_file.exists():
            raise StageOutputError(f"{self.path}: no pipeline outputs; run `{command}` first")
        return json.loads(self.stamp_file.read_text())
