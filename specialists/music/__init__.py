"""The music specialist (MUSIQUE, 29 classes on the real taxonomy): reads artists and album titles, looks at covers."""

from etalage.specialists.cover import CoverSpecialist


class MusicSpecialist(CoverSpecialist):
    groups = ("MUSIQUE",)


__all__ = ["MusicSpecialist"]
