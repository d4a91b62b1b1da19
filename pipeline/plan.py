"""What a fitted fusion model runs with (``PredictPlan``): its core models, training dump, specialists and
settings, read from the fusion folder, each path overridable. Every job that uses a fusion model (submit,
fusion predict, explain, serve, the demo) starts from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etalage.catalog import Taxonomy
from etalage.core.ensemble import CoreModel
from etalage.core.rundir import RunDir
from etalage.errors import ConfigError, StageOutputError
from etalage.fusion.folder import FusionDir
from etalage.fusion.model import FusionModel


@dataclass
class PredictPlan:
    """The fusion model's ``FusionPlan``, paths resolved and checked, each overridable per call."""

    model: FusionDir
    models: list[CoreModel]   # the core models: one run, fold runs, or several (their averaged ranking leads)
    train: Path
    specialists: Path | None
    specialist_names: list[str]
    topk: int
    ks: list[int]
    tta: str  # the core's test-time augmentation: the model saw its probabilities, test must match
    neighbours: int = 0       # embedding neighbours per product (0: none)
    id_interleave: float | None = None  # fusion's own products' id interleave (with a model without id features)

    @classmethod
    def from_model(cls, model_dir: str | Path, run=None, train=None, specialists=None) -> PredictPlan:
        """The plan stored in ``model_dir/fusion.json`` (paths relative to the folder), each path checked.
        ``run``: a path, or a list of them, in place of the stored core models (same number, same order).

        >>> plan = PredictPlan.from_model("fusion/")
        >>> plan.taxonomy().n_classes, plan.specialist_names
        """
        folder = FusionDir(model_dir)
        stored = FusionModel.load(folder).plan
        if stored is None:
            raise StageOutputError(f"{folder.meta_file}: no settings to predict with; refit with `etalage fusion fit`")

        def pick(given, key: str, flag: str) -> Path | None:
            return Path(given) if given else folder.resolve(getattr(stored, key), key, flag)

        given = [run] if isinstance(run, (str, Path)) else list(run or [])
        if given and len(given) != len(stored.runs):
            raise ConfigError(f"{folder} was fitted over {len(stored.runs)} core model(s); pass --run that many "
                              f"times (got {len(given)})")
        paths = [Path(g) for g in given] or [folder.resolve(r, "run", "--run") for r in stored.runs]
        if not paths:
            raise StageOutputError(f"{folder.meta_file}: no core run stored; pass --run PATH")
        names = stored.run_names if len(stored.run_names) == len(paths) else [None] * len(paths)
        models = [CoreModel.open(p, n) for p, n in zip(paths, names, strict=True)]
        return cls(folder, models, pick(train, "train", "--train"), pick(specialists, "specialists", "--specialists"),
                   list(stored.specialist_names), stored.topk, list(stored.ks), stored.tta, stored.neighbours,
                   stored.id_interleave)

    @property
    def run(self) -> RunDir:
        """The first core run (its taxonomy is every run's, ``check_compatible`` made sure)."""
        return self.models[0].runs[0]

    def taxonomy(self) -> Taxonomy:
        return self.run.taxonomy()

    def runs_label(self) -> str:
        return " + ".join(str(m.path) for m in self.models)

    def check_tta(self, tta: str | None) -> None:
        if tta is not None and tta != self.tta:
            raise ConfigError(f"{self.model} was fitted on core probabilities with --tta {self.tta}; predict with "
                              f"the same (drop --tta) or refit with `etalage fusion fit --tta {tta}`")

    def check_specialists(self) -> None:
        """A model whose specialists are not at hand is refused before any work."""
        if self.specialist_names and self.specialists is None:
            raise ConfigError(f"{self.model}: the model uses specialists {', '.join(self.specialist_names)}; "
                              f"pass --specialists DIR")
