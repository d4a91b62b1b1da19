"""How specialists are found: the ``etalage.specialists`` entry-point group, built-ins included.

    [project.entry-points."etalage.specialists"]
    books = "etalage.specialists.books:BooksSpecialist"

The entry-point name is the plugin's name: discovery sets ``Specialist.name`` from it (a class that
declares another name is refused, so the name a folder is fitted under and the name fusion scores
under can never differ). Discovery is cached; built-ins come first and keep their names; a plugin
registered under a taken name is listed as shadowed; one whose import fails is kept with its error
(``etalage specialists list`` shows why) and named in a warning, never a crash.
``ETALAGE_DISABLE_PLUGIN_AUTOLOAD=1`` keeps only the built-ins (reproducible benchmarks), like
pytest's PYTEST_DISABLE_PLUGIN_AUTOLOAD.

A plugin written for the previous contract (its own ``save``/``load``, ``fit`` returning None) still
works in this release, with a ``DeprecationWarning`` naming it.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import warnings
from dataclasses import dataclass

from etalage.errors import ConfigError
from etalage.specialists.base import NEEDS, Specialist

ENTRY_POINT_GROUP = "etalage.specialists"
AUTOLOAD_SWITCH = "ETALAGE_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_DISTRIBUTION = "etalage"


@dataclass(frozen=True)
class SpecialistEntry:
    name: str
    origin: str        # the distribution that provides it ("etalage" for built-ins)
    target: str        # "module:Class"
    factory: type | None
    error: str | None = None
    shadowed_by: str | None = None  # the origin whose plugin of the same name wins

    @property
    def groups(self) -> tuple[str, ...]:
        return tuple(getattr(self.factory, "groups", ())) if self.factory else ()

    @property
    def status(self) -> str:
        if self.shadowed_by:
            return f"shadowed by {self.shadowed_by} (same name)"
        return "ok" if self.error is None else f"failed: {self.error}"


def _origin(ep) -> str:
    dist = getattr(ep, "dist", None)
    return dist.metadata["Name"] if dist is not None else "?"


def uses_old_contract(factory: type) -> bool:
    """A plugin of the previous contract: it saves and loads itself."""
    return factory.save is not Specialist.save or factory.load.__func__ is not Specialist.load.__func__


def _check_plugin(name: str, factory) -> type:
    if not (isinstance(factory, type) and issubclass(factory, Specialist)):
        raise TypeError("not a Specialist subclass")
    declared = factory.__dict__.get("name", "")
    if declared and declared != name:
        raise TypeError(f"the class declares name {declared!r} but is registered as {name!r}; the entry-point name "
                        f"is the plugin's name: drop the name attribute")
    if not factory.groups:
        raise TypeError("declares no groups (level-1 category names it scores)")
    bad = [n for n in factory.needs if n not in NEEDS]
    if bad:
        raise TypeError(f"needs {bad}: a specialist may need {', '.join(NEEDS)}")
    factory.name = name
    if uses_old_contract(factory):
        warnings.warn(f"specialist {name!r} ({factory.__module__}) defines its own save/load: the pre-0.2 plugin "
                      f"contract, deprecated and removed in the next release; drop them and let the base class save "
                      f"it as data (docs/plugins.md)", DeprecationWarning, stacklevel=3)
    return factory


@functools.cache
def discover() -> dict[str, SpecialistEntry]:
    """Name -> entry for every specialist registered under the entry-point group (cached); shadowed
    plugins are under ``shadowed()``."""
    autoload = os.environ.get(AUTOLOAD_SWITCH, "") not in ("1", "true", "yes")
    found: dict[str, SpecialistEntry] = {}
    hidden: list[SpecialistEntry] = []
    eps = sorted(md.entry_points(group=ENTRY_POINT_GROUP),
                 key=lambda ep: (_origin(ep) != BUILTIN_DISTRIBUTION, ep.name, _origin(ep)))
    for ep in eps:
        origin = _origin(ep)
        if origin != BUILTIN_DISTRIBUTION and not autoload:
            continue
        if ep.name in found:
            warnings.warn(f"specialist {ep.name!r} from {origin} ignored: the name is taken by "
                          f"{found[ep.name].origin}", stacklevel=2)
            hidden.append(SpecialistEntry(ep.name, origin, ep.value, None, shadowed_by=found[ep.name].origin))
            continue
        try:
            factory = _check_plugin(ep.name, ep.load())
            found[ep.name] = SpecialistEntry(ep.name, origin, ep.value, factory)
        except Exception as exc:  # noqa: BLE001 - any broken plugin is reported, not fatal
            warnings.warn(f"specialist plugin {ep.name!r} from {origin} failed to load and is skipped: "
                          f"{type(exc).__name__}: {exc}", stacklevel=2)
            found[ep.name] = SpecialistEntry(ep.name, origin, ep.value, None, f"{type(exc).__name__}: {exc}")
    _SHADOWED[:] = hidden
    return found


_SHADOWED: list[SpecialistEntry] = []


def shadowed() -> list[SpecialistEntry]:
    """Plugins registered under a name a built-in or an earlier plugin already holds."""
    discover()
    return list(_SHADOWED)


def available() -> dict[str, SpecialistEntry]:
    """The specialists that loaded."""
    return {k: v for k, v in discover().items() if v.factory is not None}


def create_specialist(name: str, **options) -> Specialist:
    """A new (unfitted) specialist of the plugin ``name``; ``options`` are its constructor arguments."""
    entries = available()
    if name not in entries:
        raise ConfigError(f"unknown specialist {name!r}; available: {', '.join(sorted(entries)) or 'none'}")
    try:
        return entries[name].factory(**options)
    except TypeError as exc:
        raise ConfigError(f"specialist {name!r}: bad options {sorted(options)} ({exc})") from None


def parse_options(items: list[str], names: list[str]) -> dict[str, dict]:
    """``["phones.C=4", "books.encoder=none"]`` -> ``{"phones": {"C": 4}, "books": {"encoder": "none"}}``;
    values are read as JSON when they parse (numbers, true/false, lists), else kept as text
    (``etalage.options.parse_key_values``)."""
    from etalage.options import parse_key_values

    out: dict[str, dict] = {n: {} for n in names}
    for key, value in parse_key_values(items, "--set").items():
        plugin, dot, option = key.partition(".")
        if not dot or not option:
            raise ConfigError(f"--set {key}=...: expected NAME.OPTION=VALUE (e.g. books.C=4)")
        if plugin not in out:
            raise ConfigError(f"--set {key}=...: {plugin!r} is not among the specialists {', '.join(names)}")
        out[plugin][option] = value
    return out
