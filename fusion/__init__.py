"""Fusion: the second level over candidate classes. So far: the candidate table with the core's
features, the vectorised signals (product-id neighbours, picture-hash matches) and the LightGBM
ranker over them (``assemble`` -> ``FusionModel``). Commands and the full submission pipeline come
with their issue."""

from etalage.fusion.model import FusionModel, assemble, hash_candidates
from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, neighbour_ks
from etalage.fusion.table import CORE_FEATURE_NAMES, CandidateTable, candidates, core_features

__all__ = ["CORE_FEATURE_NAMES", "CandidateTable", "FusionModel", "IdNeighbourPrior", "PictureHashIndex",
           "assemble", "candidates", "core_features", "hash_candidates", "neighbour_ks"]
