"""Building blocks of the command line: the parser every command gets (no abbreviations, old spellings
refused with a hint), the options many commands share (compute, engine, pipeline), and what a command's
options become for the library (``Compute``, an engine, ``KEY=VALUE`` settings)."""

from __future__ import annotations

import re

from jsonargparse import ActionConfigFile, ArgumentParser

from etalage.options import RUN_ENGINES, TTA_MODES

# Spellings of etalage 0.x removed in 1.0: an old flag is refused as unrecognised (exit status 2), with this hint.
RENAMED = {"--picture-fusion": "--picture-pooling", "--test": "--data", "--model": "--fusion",
           "--cache": "--ocr-cache", "--minutes": "--max-minutes", "--batch": "--batch-size", "--lgb": "--set",
           "--option": "--set", "--top": "--limit"}
RENAMED_IN = {("train", "--fusion"): "--picture-pooling", ("ocr", "--engine"): "--ocr-engine (an OCR engine) or "
              "--engine local|ray (where the job runs)", ("demo", "--specialists"): "--names"}


class Parser(ArgumentParser):
    """jsonargparse's parser with prefixes refused (``--picture-fus`` is not ``--picture-fusion``: a removed flag
    must never silently become another) and a hint naming the 1.0 spelling of an old flag."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("exit_on_error", True)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        command = (self.prog or "").split()[-1]
        hints = [f"{old} is now {new}" for old, new in RENAMED.items() if _names(message, old)]
        hints += [f"{old} is now {new}" for (cmd, old), new in RENAMED_IN.items()
                  if cmd == command and _names(message, old) and not any(old in h for h in hints)]
        # a config.yaml of etalage 0.x names the same options as keys (flags without --, with _)
        hints += [f"the key {_key(old)} is now {_key(new.split()[0])}" for old, new in RENAMED.items()
                  if f"'{_key(old)}'" in message]
        if hints:
            message = f"{message} ({'; '.join(hints)}; see CHANGELOG.md)"
        elif re.fullmatch(r"'[\w-]+'", message.strip()):  # jsonargparse's word for a bad key in a subcommand's config
            message = (f"{message}: a --config file holds a key this command does not take (keys are its flags "
                       f"without --, with _; see --help)")
        return super().error(message, ex)


def _names(message: str, flag: str) -> bool:
    """Whether an argparse error message names ``flag`` itself (not a longer flag it prefixes)."""
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", message) is not None


def _key(flag: str) -> str:
    """A flag as a config file's key: ``--max-minutes`` -> ``max_minutes`` (``--set`` is stored as ``settings``)."""
    return "settings" if flag == "--set" else flag.lstrip("-").replace("-", "_")


def leaf(sub, handlers: dict, path: tuple[str, ...], func, help_: str, description: str | None = None,
         config: bool = True) -> Parser:
    """A command's parser, with the shared options, registered under ``path``."""
    p = Parser(prog=f"etalage {' '.join(path)}", description=description or help_)
    sub.add_subcommand(path[-1], p, help=help_)
    add_common(p, config)
    handlers[path] = func
    return p


def group(sub, name: str, help_: str, description: str, dest: str = "action"):
    """A command with sub-commands (``fusion fit``, ``specialists list``, ``bench core``)."""
    p = Parser(prog=f"etalage {name}", description=description)
    sub.add_subcommand(name, p, help=help_)
    add_common(p, config=False)
    return p.add_subcommands(dest=dest, required=True, metavar=dest.upper())


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


def compute_options(p, batch_help: str = "products per batch") -> None:
    p.add_argument("--batch-size", type=int, default=64, help=batch_help)
    p.add_argument("--workers", type=int, help="decoding processes (default: none on CPU, most cores on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load model files that hold more than tensors (older etalage); they can run code: only "
                        "for files you made yourself")


def engine_options(p, what: str = "the stages") -> None:
    """Where a job runs: this machine (local) or a Ray cluster."""
    p.add_argument("--engine", default="local", choices=RUN_ENGINES,
                   help=f"local: {what} one after the other on this machine (forked workers where they help); ray: a "
                        "Ray Data pipeline over a cluster, the stages at once, chunk by chunk (pip install "
                        "'etalage[ray]'); the same outputs")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: join the running cluster at ADDR (`ray start --head` prints it; 'auto': "
                        "the one on this machine); unset: Ray starts on this machine for the command and stops after")
    p.add_argument("--ray-dashboard", action="store_true",
                   help="with --engine ray and no --ray-address: also start Ray's dashboard (off by default)")


def pipeline_options(p) -> None:
    """Options of the jobs that run a dump through the whole pipeline (submit, fusion predict)."""
    p.add_argument("--data", required=True, metavar="FILE.bson", help="the dump to predict")
    p.add_argument("--fusion", metavar="FUSION", help="fusion model (`etalage fusion fit`); it names the run, "
                                                     "training file and specialists it was fitted with")
    p.add_argument("--run", action="append",
                   help="core run (unset: the fusion model's; required without --fusion); repeat for a fusion of "
                        "several, in its order")
    p.add_argument("--train", metavar="FILE.bson", help="training dump for the hash and id signals (unset: the "
                                                       "fusion model's)")
    p.add_argument("--specialists", metavar="SPECS", help="fitted specialists (unset: the fusion model's)")
    p.add_argument("--work", metavar="WORK", help="stage outputs (unset: OUT_work beside --out, or DATA.work)")
    p.add_argument("--shard", default="0/1", help="i/n: run slice i of n only")
    p.add_argument("--chunk", type=int, default=4096,
                   help="products per resumable part (a killed job redoes at most one; shards are whole parts)")
    p.add_argument("--ocr-cache", help="SQLite OCR cache (unset: ocr-cache.sqlite beside the data)")
    p.add_argument("--topk", type=int, default=20, help="core top-K (core-only submissions)")
    p.add_argument("--tta", choices=TTA_MODES, help="core test-time augmentation (unset: the fusion model's, "
                                                    "else none)")
    p.add_argument("--with", dest="with_signals", choices=("id",),
                   help="id: fuse with the product-id prior even where the test ids do not interleave with the "
                        "training ids (unset: decided from the ids, said on the terminal and in WORK/id_prior.json)")
    p.add_argument("--without", dest="without_signals", choices=("id",),
                   help="id: fuse with the model fitted without id features (there when the training ids looked "
                        "numbered category by category)")
    compute_options(p)
    engine_options(p)


def settings_option(p, example: str, what: str) -> None:
    """``--set KEY=VALUE`` (repeatable): the one spelling of free-form settings in every command."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help=f"{what}, e.g. {example} (repeat; values read as JSON when they parse: 3, 0.5, true, "
                        "[1, 2]; Python's True, False and None too)")


def compute_of(args):
    """The command's ``Compute`` (device, batch size, workers, trust, progress bars, cache folder)."""
    from etalage.compute import Compute

    return Compute(device=getattr(args, "device", "auto") or "auto", batch_size=getattr(args, "batch_size", 64) or 64,
                   workers=getattr(args, "workers", None), trust_pickle=bool(getattr(args, "trust_pickle", False)),
                   progress=not args.quiet, cache_dir=args.cache_dir)


def engine_of(args, workers: int | None = None, layout: dict | None = None):
    """The engine the command runs on (``--engine``, ``--ray-*``): the one place a job's engine is chosen.
    ``workers``: the local engine's forked processes (default: every usable core); ``layout``: Ray placements
    to force (e.g. ``{"ocr.actors": 4}``)."""
    if getattr(args, "engine", "local") == "ray":
        from etalage.pipeline.ray_engine import RayEngine, RaySettings

        ray = RaySettings(address=args.ray_address, dashboard=bool(args.ray_dashboard), verbose=int(args.verbose or 0),
                          layout=dict(layout or {}))
        return RayEngine(ray, progress=not args.quiet, device=getattr(args, "device", "auto") or "auto")
    from etalage.pipeline.engine import LocalEngine

    return LocalEngine(not args.quiet, workers)


def names_of(text: str | None) -> list[str]:
    """A comma-separated list (``--names``, ``--groups``, ``--without``)."""
    return [n.strip() for n in (text or "").split(",") if n.strip()]


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


def id_prior_of(args) -> str:
    """``auto``, ``with`` or ``without`` (``--with id`` / ``--without id``)."""
    from etalage.errors import ConfigError

    if args.with_signals and args.without_signals:
        raise ConfigError("--with id and --without id: one or the other")
    return "with" if args.with_signals else "without" if args.without_signals else "auto"
