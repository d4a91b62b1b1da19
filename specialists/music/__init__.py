"""The music specialist (MUSIQUE, 29 classes on the real taxonomy): reads artists and album titles."""

from etalage.specialists.text import TextSpecialist


class MusicSpecialist(TextSpecialist):
    groups = ("MUSIQUE",)


__all__ = ["MusicSpecialist"]
