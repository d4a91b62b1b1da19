"""The server's limits and switches in one value, shared by the app, the local server and Ray Serve."""

from __future__ import annotations

from dataclasses import dataclass

from etalage.errors import ConfigError

MAX_PICTURES = 4  # per product, as a seller lists them (the models were trained on 1-4)


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how it batches.

    Memory is bounded by these numbers, not by the traffic: at most ``max_queue`` products wait for the
    model (more: 503 with Retry-After), a request body is read up to ``max_body_bytes`` (more: 413, found
    while reading), and the body must arrive within ``read_timeout_s`` (a slow client gets 408).
    """

    batch_size: int | None = None     # products per classify call (None: the classifier's max_batch)
    max_wait_ms: float = 5.0          # how long the first product of a batch waits for company
    max_queue: int = 256              # products waiting for the model, all requests together
    max_body_bytes: int = 32 << 20    # one request, pictures and fields together
    max_picture_bytes: int = 10 << 20  # one picture file
    max_products: int = 64            # products in one /v1/classify/batch request
    max_title_chars: int = 2000
    read_timeout_s: float = 30.0      # to receive a whole request body
    api_key: str | None = None        # None: the API is open (bind to 127.0.0.1 then)
    load_before_serving: bool = False  # True: startup waits for the models (Ray replicas); False: /ready tells
    decode_threads: int = 4           # pictures validated at once (each up to 50 MB decoded)

    def __post_init__(self):
        for name in ("max_queue", "max_body_bytes", "max_picture_bytes", "max_products", "decode_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"serve setting {name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.max_wait_ms < 0 or self.read_timeout_s <= 0:
            raise ConfigError("--max-wait-ms must be >= 0 and --read-timeout positive")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("the API key is empty (the key file holds only white space)")


def size_text(n: int) -> str:
    """A byte count as people read it in an error line (32 MB, 200 KB)."""
    return f"{n / 2**20:.3g} MB" if n >= 2**20 else f"{n / 2**10:.3g} KB"


def read_api_key(path: str) -> str:
    """The key in ``path`` (its content, stripped): kept out of the command line, where `ps` shows it."""
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except OSError as exc:
        raise ConfigError(f"--api-key-file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--api-key-file {path}: not UTF-8 text") from None
    if not key:
        raise ConfigError(f"--api-key-file {path} is empty")
    return key
