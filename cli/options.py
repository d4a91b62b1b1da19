"""Building blocks of the command line: the options every command shares, deprecated aliases, and
``KEY=VALUE`` lists."""

from __future__ import annotations

import argparse
import sys

from jsonargparse import ActionConfigFile, ArgumentParser


class DeprecatedAlias(argparse.Action):
    """Stores like ``store`` (or ``store_true`` with ``nargs=0``); warns when an old spelling is used."""

    def __init__(self, option_strings, dest, old: tuple[str, ...] = (), **kwargs):
        self.old = old
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.old:
            # printed, not warnings.warn: Python hides DeprecationWarning outside __main__, and a user
            # running a script must see it
            print(f"etalage: {option_string} is deprecated and will be removed in the next release; use "
                  f"{self.option_strings[0]}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def alias(parser, new: str, *old: str, **kwargs) -> None:
    """``--new`` with the old spellings ``old`` kept for one release (they warn)."""
    kwargs["help"] = kwargs.get("help", "") + f" (formerly {', '.join(old)})"
    parser.add_argument(new, *old, action=DeprecatedAlias, old=old, **kwargs)


def add_common(parser: ArgumentParser, config: bool = True) -> None:
    """What every command accepts, before or after its name: verbosity, quiet, the cache folder and
    (leaf commands) a config file."""
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no stage lines")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="where indexes, picture hashes and the default OCR cache go (also ETALAGE_CACHE_DIR; "
                             "default: beside the input when its folder is writable, else ~/.cache/etalage)")
    if config:
        parser.add_argument("--config", action=ActionConfigFile,
                            help="YAML or JSON file of this command's options (keys as the flags without --, with _; "
                                 "flags given after it win). Outputs hold the resolved one (config.yaml) to rerun")


NOT_SETTINGS = ("config", "verbose", "quiet", "cache_dir", "resume", "merge", "trust_pickle", "__path__",
                "__default_config__")  # per-call actions and output switches, not settings of the result


def save_resolved(args, path) -> None:
    """Write the command's resolved options as YAML to ``path`` (an output folder's ``config.yaml``):
    ``--config`` takes it back, so a run can be repeated or varied from its own folder."""
    import yaml

    from etalage.files import atomic_write

    settings = {k: v for k, v in args.as_dict().items() if k not in NOT_SETTINGS}
    settings = {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in settings.items()}
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write("# resolved options of this command; rerun with --config this-file (flags given after it win)\n")
        yaml.safe_dump(settings, fh, sort_keys=False, allow_unicode=True)
