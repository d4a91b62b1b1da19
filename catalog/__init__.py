"""Data layer: the Cdiscount taxonomy, BSON dumps behind an offset index, picture decoding,
validation splits and the synthetic catalogue used by tests and the demo.

Nothing here imports torch, so the commands built on it start fast.
"""

from etalage.catalog.bsonindex import BsonIndex, build_index, index_path_for
from etalage.catalog.catalog import Catalog, Product
from etalage.catalog.pictures import DecodeStats, decode_picture, random_crop
from etalage.catalog.split import validation_split
from etalage.catalog.taxonomy import Taxonomy

__all__ = [
    "BsonIndex",
    "Catalog",
    "DecodeStats",
    "Product",
    "Taxonomy",
    "build_index",
    "decode_picture",
    "index_path_for",
    "random_crop",
    "validation_split",
]
