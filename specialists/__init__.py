"""Specialists: plugins that read the products the core routes to them and score their own classes.

Plugin authors write ``from etalage.specialists import Specialist`` (see docs/plugins.md).
"""

from etalage.specialists.base import (
    ENTRY_POINT_GROUP,
    ProductReading,
    Specialist,
    SpecialistOutput,
    available,
    create_specialist,
    discover,
    safe_predict,
)

__all__ = ["ENTRY_POINT_GROUP", "ProductReading", "Specialist", "SpecialistOutput", "available",
           "create_specialist", "discover", "safe_predict"]
