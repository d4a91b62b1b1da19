"""The ``etalage`` command: parse, call one library function, report.

Each command lives in one of ``cli.data`` (synth, index, hash, info, score), ``cli.model`` (train,
predict, submit), ``cli.second`` (ocr, specialists, fusion), ``cli.tools`` (bench, demo,
explain) and ``cli.serve`` (serve). Heavy imports (torch, easyocr) happen inside the commands that need them, so the data
commands start in a fraction of a second. Every command takes ``--config FILE`` (YAML/JSON; flags win)
and ``-v``/``-q``/``--cache-dir`` before or after its name.

Errors: a library ``EtalageError``, a system error (disk full, permission denied), a decoding or
overflow error in an input file each become one line on stderr and exit status 1; usage errors exit 2;
a closed pipe (``etalage score ... | head -1``) ends quietly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

from etalage.cli import data, model, second, serve, tools
from etalage.cli.options import Parser, add_common
from etalage.errors import EtalageError

GROUPS = (data, model, second, tools, serve)


def build_parser() -> tuple[Parser, dict]:
    """The parser and the handler of every command path (e.g. ``("fusion", "fit")``)."""
    p = Parser(prog="etalage", default_env=False,
               description="Sort e-commerce products into a catalogue's fine categories from their pictures "
                           "(Cdiscount BSON dumps, category_names.csv, Kaggle submissions; your own listings "
                           "through `etalage pack`).",
               epilog="Start with `etalage demo` (synthetic catalogue end to end); `etalage COMMAND --help` "
                      "for details; docs/cli.md lists every command and flag.")
    add_common(p, config=False)
    sub = p.add_subcommands(dest="command", required=True, metavar="COMMAND")
    handlers: dict = {}
    for group in GROUPS:
        group.register(sub, handlers)
    return p, handlers


def _leaf(cfg) -> tuple[tuple[str, ...], object]:
    """The command path and the innermost namespace of a parsed command line."""
    path, ns = [], cfg
    key = "command"
    while key and getattr(ns, key, None):
        name = getattr(ns, key)
        path.append(name)
        ns = getattr(ns, name)
        key = next((k for k in ("action", "benchmark") if getattr(ns, k, None)), None)
    return tuple(path), ns


@contextlib.contextmanager
def _output(verbose: int, quiet: bool):
    """For the command's duration: stage lines (INFO of etalage's loggers) on stderr unless -q, -v adds debug,
    warnings as one line. Put back as they were afterwards: ``main`` may be called from a notebook or a test,
    whose logging and warning hooks are theirs."""
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("etalage")
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"etalage: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line
            yield
    finally:
        root.handlers[:], level, root.propagate = saved[0], saved[1], saved[2]
        root.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    parser, handlers = build_parser()
    cfg = parser.parse_args(argv)
    path, args = _leaf(cfg)
    args.verbose = int(getattr(args, "verbose", 0) or 0) + int(cfg.verbose or 0)
    args.quiet = bool(getattr(args, "quiet", False) or cfg.quiet)
    args.cache_dir = getattr(args, "cache_dir", None) or cfg.cache_dir  # travels as a value (Compute.cache_dir)
    name = " ".join(path)
    with _output(args.verbose, args.quiet):
        try:
            return int(handlers[path](args) or 0)
        except EtalageError as exc:
            return _fail(name, str(exc))
        except KeyboardInterrupt:
            print(f"etalage {name}: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:
            _quiet_pipe()
            return 0
        except (OSError, UnicodeDecodeError, OverflowError, MemoryError) as exc:
            return _fail(name, _system_message(exc))


def _fail(name: str, message: str) -> int:
    print(f"etalage {name}: error: {' '.join(message.split())}", file=sys.stderr)
    return 1


def _system_message(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, UnicodeDecodeError):
        return f"an input is not UTF-8 text (byte {exc.start}: {exc.reason})"
    if isinstance(exc, OverflowError):
        return f"a number in an input is too large ({exc})"
    return f"out of memory ({exc})"


def _quiet_pipe() -> None:
    """The reader of our output went away (``| head``): stop without a traceback or a flush error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
