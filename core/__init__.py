"""The core: a multi-picture CNN that ranks every class of the taxonomy for each product.

``create_backbone`` (timm + offline weights) -> ``MultiImageNet`` (fusion over 1-4 pictures,
level-1/2 heads) -> ``train`` (one process or torchrun) -> ``CorePredictor`` -> ``CoreRanking``.
"""

from etalage.core.backbones import OFFLINE_WEIGHTS, create_backbone
from etalage.core.model import FUSIONS, MultiImageNet
from etalage.core.predict import CorePredictor, CoreRanking
from etalage.core.train import TrainConfig, load_trained, train

__all__ = ["FUSIONS", "OFFLINE_WEIGHTS", "CorePredictor", "CoreRanking", "MultiImageNet", "TrainConfig",
           "create_backbone", "load_trained", "train"]
