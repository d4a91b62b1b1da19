"""Specialists: plugins that score the classes of some level-1 groups for the products the core routes
to them, from the text on their pictures (OCR) and, if they ask, the pictures themselves or the
products' titles (the built-in ``title`` specialist scores every class from titles alone).

Plugin authors write ``from etalage.specialists import Specialist`` (see docs/plugins.md) and test
with ``etalage.specialists.testing.check_specialist``.
"""

from etalage.specialists.base import EVERY_GROUP, ProductReading, Specialist, SpecialistOutput
from etalage.specialists.plugins import (
    AUTOLOAD_SWITCH,
    ENTRY_POINT_GROUP,
    available,
    create_specialist,
    discover,
    shadowed,
)

__all__ = ["AUTOLOAD_SWITCH", "ENTRY_POINT_GROUP", "EVERY_GROUP", "ProductReading", "Specialist", "SpecialistOutput",
           "available", "create_specialist", "discover", "shadowed"]
