"""Fusion: the second level over candidate classes. So far the candidate table with the core's
features and the vectorised signals it ranks with (product-id neighbours, picture-hash matches);
the LightGBM ranker comes with its issue."""

from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, neighbour_ks
from etalage.fusion.table import CORE_FEATURE_NAMES, CandidateTable, candidates, core_features

__all__ = ["CORE_FEATURE_NAMES", "CandidateTable", "IdNeighbourPrior", "PictureHashIndex", "candidates",
           "core_features", "neighbour_ks"]
