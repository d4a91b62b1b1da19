"""Where files derived from an input live (offset index, picture MD5s, OCR cache): never written into
a read-only input folder.

Kaggle mounts its inputs read-only (``/kaggle/input``) and catalogue teams share dumps on read-only
storage, so a derived file goes:

1. under the cache folder given as a value (``cache_dir``: the CLI's ``--cache-dir``, ``Compute.cache_dir``), or
   else named by the environment variable ``ETALAGE_CACHE_DIR``, when either is set;
2. else beside the input, when it is already there or the input's folder is writable (a folder whose
   permission bits grant no write is treated as read-only even for root);
3. else under the user cache folder (``$XDG_CACHE_HOME/etalage``, by default ``~/.cache/etalage``).

In cache folders, each input folder gets its own subfolder (named after it and a digest of its
absolute path), so two ``train.bson`` files from different places never share an index.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CACHE_ENV = "ETALAGE_CACHE_DIR"


def user_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "etalage"


def folder_writable(folder: Path) -> bool:
    """Whether etalage may write into ``folder``: the OS allows it and, for root (whom the OS always
    allows), the folder's permission bits grant some write."""
    try:
        st = folder.stat()
    except OSError:
        return False
    if not os.access(folder, os.W_OK):
        return False
    return not (hasattr(os, "geteuid") and os.geteuid() == 0 and not st.st_mode & 0o222)


def _cache_subfolder(root: Path, source_folder: Path) -> Path:
    absolute = source_folder.resolve()
    digest = hashlib.sha1(str(absolute).encode()).hexdigest()[:10]
    return root / f"{absolute.name or 'root'}-{digest}"


def _explicit(cache_dir: str | Path | None) -> Path | None:
    """The cache folder asked for: the value given, else ``$ETALAGE_CACHE_DIR`` (read, never written)."""
    chosen = cache_dir or os.environ.get(CACHE_ENV)
    return Path(chosen) if chosen else None


def derived_path(source: str | Path, name: str, cache_dir: str | Path | None = None) -> Path:
    """Where to write the file ``name`` derived from ``source`` (a file or a folder: its folder decides).

    >>> derived_path("/kaggle/input/cdiscount/train.bson", "train.bson.idx.npz")   # read-only input
    PosixPath('/root/.cache/etalage/cdiscount-3f2a6c01d2/train.bson.idx.npz')
    """
    folder = _folder_of(Path(source))
    explicit = _explicit(cache_dir)
    if explicit:
        return _cache_subfolder(explicit, folder) / name
    if folder_writable(folder):
        return folder / name
    return _cache_subfolder(user_cache_root(), folder) / name


def derived_candidates(source: str | Path, name: str, cache_dir: str | Path | None = None) -> list[Path]:
    """Where to look for an existing derived file, best first: the cache folder when one is set, else
    beside the input and then the user cache (an index shipped beside a read-only input is used)."""
    folder = _folder_of(Path(source))
    explicit = _explicit(cache_dir)
    if explicit:
        return [_cache_subfolder(explicit, folder) / name]
    return [folder / name, _cache_subfolder(user_cache_root(), folder) / name]


def _folder_of(source: Path) -> Path:
    return source if source.is_dir() else source.parent
