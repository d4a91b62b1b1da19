"""The media specialist: books and CDs together (LIBRAIRIE + MUSIQUE, 191 classes on the real taxonomy).

The core often mistakes an album cover for a book cover (both are a square of artwork and lettering);
the books and music specialists each score only their own group's classes, so neither can say "this
is an album, not a book", and the music specialist is not asked about the albums the core sends to
LIBRAIRIE. One model over both groups' classes learns the group from the cover too (its looking part
sees the shape and the art, its reading part the words) and answers for products the core sends to
either group.
"""

from etalage.specialists.cover import CoverSpecialist


class MediaSpecialist(CoverSpecialist):
    groups = ("LIBRAIRIE", "MUSIQUE")


__all__ = ["MediaSpecialist"]
