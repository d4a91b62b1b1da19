"""Fusion: the second level over candidate classes. For now the vectorised signals it ranks with
(product-id neighbours, picture-hash matches); the LightGBM ranker comes with its issue."""

from etalage.fusion.signals import IdNeighbourPrior, PictureHashIndex, neighbour_ks

__all__ = ["IdNeighbourPrior", "PictureHashIndex", "neighbour_ks"]
