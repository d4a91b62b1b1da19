"""The books specialist (LIBRAIRIE, 162 classes on the real taxonomy): reads titles and authors, looks at covers."""

from etalage.specialists.cover import CoverSpecialist


class BooksSpecialist(CoverSpecialist):
    groups = ("LIBRAIRIE",)


__all__ = ["BooksSpecialist"]
