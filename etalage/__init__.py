"""etalage: sort e-commerce products into a catalogue's fine categories from their pictures.

The package is one namespace over the repository's folders: ``etalage.catalog`` (BSON data,
taxonomy, synthetic catalogue), ``etalage.core`` (the multi-picture CNN) and the CLI.
"""

__version__ = "0.1.0"

from etalage.errors import EtalageError  # noqa: E402

__all__ = ["EtalageError", "__version__"]
