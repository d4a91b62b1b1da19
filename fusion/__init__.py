"""Fusion: the second level over candidate classes.

Candidates per product (the core's top-K, classes of training products sharing an exact picture, the
specialists' top-k) get features from every signal (``fusion.table``, ``fusion.signals``) and a
LightGBM ranker orders them (``fusion.model``); ``fusion.report`` measures what each signal adds.
Running it over a data file, stage by stage, is the pipeline's job (``etalage.pipeline``).
"""

from etalage.fusion.folder import FusionDir, FusionPlan
from etalage.fusion.model import FusionModel, assemble, feature_groups, fused_top1, hash_candidates
from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, TrainingSignals, neighbour_ks
from etalage.fusion.table import CORE_FEATURE_NAMES, CandidateTable, candidates, core_features

__all__ = ["CORE_FEATURE_NAMES", "CandidateTable", "FusionDir", "FusionModel", "FusionPlan", "IdNeighbourPrior",
           "PictureHashIndex", "TrainingSignals", "assemble", "candidates", "core_features", "feature_groups",
           "fused_top1", "hash_candidates", "neighbour_ks"]
