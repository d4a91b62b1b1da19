"""The books specialist (LIBRAIRIE, 162 classes on the real taxonomy): reads titles and authors."""

from etalage.specialists.text import TextSpecialist


class BooksSpecialist(TextSpecialist):
    groups = ("LIBRAIRIE",)


__all__ = ["BooksSpecialist"]
