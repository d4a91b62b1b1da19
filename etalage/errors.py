"""Error types: every failure a user can act on is an ``EtalageError`` with a one-line message.

Only the CLI prints these and chooses the exit code; the library raises them. ``ConfigError`` and
``DataError`` are also ``ValueError``s, so code that validates arguments the Python way still
catches them.
"""


class EtalageError(Exception):
    """Base class: the message names the file, product or field at fault and what to do."""


class DataError(EtalageError, ValueError):
    """A BSON dump, index or CSV that cannot be read as the Cdiscount format."""


class TaxonomyError(EtalageError):
    """A category file that is unreadable or malformed, or a category missing from it."""


class ConfigError(EtalageError, ValueError):
    """A model name, option or weight file that does not fit."""


class StageOutputError(EtalageError):
    """A pipeline stage's output is missing or stale; the message names the command that makes it."""


class UnsafeFileError(EtalageError):
    """A model file that would run code when loaded (a pickle asking for more than tensors and plain
    values): refused; the message names the file and how to rebuild it."""
