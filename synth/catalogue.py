"""The synthetic catalogue: Cdiscount-shaped BSON dumps for tests, benchmarks and the demo.

It reproduces the signals the 2017 solutions exploited, each with its own strength knob:
class-specific shapes, textures and colours under noise (level-1 decides the shape family,
level-2 the texture, the class the colour, so the level heads have something to learn); book
and CD covers that share one style per group and differ only by the words printed on them;
product ids that carry no class between neighbours, as in Cdiscount's real sample (only a slow
drift of the class mix over the id range; runs of one class are a knob); exact duplicate pictures
within a class (also across train and test); placeholder pictures shared by every class;
long-tailed class sizes and 1-4 pictures per product, skewed towards one. Real book and album covers
can stand in for the drawn ones (``book_covers``, ``music_covers``; ``etalage.synth.real_covers``).
With ``titles``, products carry a noisy title as a catalogue listing's would (the class's words mixed
with brand and colour words, some missing), drawn from a random stream of its own: the pictures, and
the whole dump when ``titles`` is 0, are the same bytes as without.

Every picture is drawn from a random generator seeded by (seed, product number), so a seed
gives the same bytes with any number of worker processes.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from etalage.catalog.taxonomy import Taxonomy
from etalage.errors import ConfigError
from etalage.files import atomic_write
from etalage.forking import map_forked
from etalage.progress import bar as progress_bar
from etalage.resources import usable_cpus
from etalage.synth.covers import SIZE, draw_cover, hsv_rgb
from etalage.synth.fonts import load_font
from etalage.synth.words import BRANDS, COLOURS, ENGLISH, FILLER, FIRST_NAMES, FRENCH, LAST_NAMES

BOOKS, MUSIC = "LIBRAIRIE", "MUSIQUE"
PICTURES_PER_PRODUCT_P = (0.62, 0.15, 0.09, 0.14)  # 1.75 pictures per product, as in train.bson

# (level-1, level-2, [level-3 ...]) of the default synthetic taxonomy: real Cdiscount names, few classes.
DEFAULT_TREE = [
    (BOOKS, "LITTERATURE", ["ROMAN", "POLICIER - THRILLER", "SCIENCE-FICTION", "POESIE"]),
    (BOOKS, "SCOLAIRE", ["MANUEL SCOLAIRE", "PARASCOLAIRE"]),
    (BOOKS, "LOISIRS", ["CUISINE", "TOURISME - VOYAGE"]),
    (MUSIC, "CD", ["CD POP ROCK", "CD JAZZ BLUES", "CD CLASSIQUE", "CD RAP - HIP HOP"]),
    (MUSIC, "VINYLE", ["VINYLE POP ROCK", "VINYLE VARIETE FRANCAISE"]),
    ("INFORMATIQUE", "ACCESSOIRE", ["SOURIS", "CLAVIER", "CLE USB"]),
    ("INFORMATIQUE", "CONNECTIQUE", ["CABLE HDMI", "CHARGEUR"]),
    ("TELEPHONIE - GPS", "ACCESSOIRE TELEPHONE", ["COQUE - BUMPER", "PROTECTION ECRAN", "SUPPORT"]),
    ("TELEPHONIE - GPS", "TELEPHONE", ["SMARTPHONE"]),
    ("MAISON", "DECORATION", ["COUSSIN", "CADRE PHOTO", "VASE"]),
    ("MAISON", "LINGE DE MAISON", ["DRAP", "RIDEAU"]),
    ("JARDIN - PISCINE", "OUTIL DE JARDIN", ["SECATEUR", "ARROSOIR"]),
    ("JARDIN - PISCINE", "MOBILIER DE JARDIN", ["CHAISE DE JARDIN", "PARASOL"]),
    ("JEUX - JOUETS", "FIGURINE", ["FIGURINE", "POUPEE"]),
    ("JEUX - JOUETS", "JEU DE SOCIETE", ["PUZZLE", "JEU DE CARTES"]),
    ("BIJOUX - LUNETTES - MONTRES", "BIJOUX", ["BAGUE", "COLLIER", "BRACELET"]),
    ("BIJOUX - LUNETTES - MONTRES", "MONTRE", ["MONTRE"]),
    ("AUTO - MOTO", "PIECE AUTO", ["BOUGIE", "FILTRE A HUILE"]),
    ("SPORT", "FITNESS", ["HALTERE", "TAPIS DE YOGA"]),
    ("SPORT", "CYCLE", ["CASQUE VELO"]),
]


def default_taxonomy(real_groups: dict[str, list[tuple[str, str, str]]] | None = None) -> Taxonomy:
    """A small taxonomy shaped like the real one (LIBRAIRIE and MUSIQUE groups included). ``real_groups``:
    level-1 name -> the (level-1, level-2, level-3) classes that replace its built-in ones (the real
    classes real covers stand for)."""
    real_groups = real_groups or {}
    tree = [(l1, l2, [(l1, l2, l3) for l3 in leaves]) for l1, l2, leaves in DEFAULT_TREE if l1 not in real_groups]
    tree += [(names[0], names[1], [names]) for classes in real_groups.values() for names in classes]
    rows = [(1000010000 + 97 * k, *names) for k, names in enumerate(n for _, _, leaves in tree for n in leaves)]
    return Taxonomy.from_rows(rows, source="synthetic default taxonomy")


@dataclass(frozen=True)
class SynthConfig:
    """Size and signal strengths of a synthetic catalogue (every knob in [0, 1] unless said)."""

    products: int = 2000
    seed: int = 0
    test_fraction: float = 0.2
    noise: float = 0.5            # generic pictures: jitter of colour, pose, background, clutter
    text_strength: float = 0.8    # share of cover words drawn from the class's own vocabulary
    # Mean run of consecutive product ids with one class. 1: none. In Cdiscount's real sample,
    # neighbouring ids share a class 17% of the time, what independence gives there.
    id_run_length: float = 1.0
    id_drift: float = 0.3         # slow drift of the class mix over the id range (amplitude, 0-1)
    duplicate_rate: float = 0.15  # pictures that are exact copies of one of the class's stock pictures
    placeholder_rate: float = 0.02  # pictures replaced by a placeholder shared by all classes
    tail: float = 0.9             # Zipf exponent of class sizes (0 = balanced)
    classes: int | None = None    # use only this many classes of the taxonomy (default: all)
    jpeg_quality: int = 90
    workers: int | None = None    # processes drawing pictures (default: all cores)
    book_covers: str | None = None   # folder of real book covers (listing.csv + images/) for LIBRAIRIE
    music_covers: str | None = None  # folder of real album covers for MUSIQUE
    titles: float = 0.0           # share of products with a title (0: none, as in Cdiscount's dumps)

    def check(self) -> None:
        if self.products < 1:
            raise ConfigError("products must be >= 1")
        for name in ("test_fraction", "noise", "text_strength", "duplicate_rate", "placeholder_rate", "id_drift",
                     "titles"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {v}")
        if self.id_run_length < 1:
            raise ConfigError("id_run_length must be >= 1")


# ---------------------------------------------------------------------------------------------
# the plan: which class, id and picture kinds each product gets (main process, vectorised)


@dataclass(frozen=True)
class _ClassStyle:
    group: str          # "book", "music" or "generic"
    shape: int          # generic: shape family (from level-1)
    texture: int        # generic: texture (from level-2)
    hue: float          # generic: class colour
    vocab: tuple[str, ...]   # covers: the class's own words
    people: tuple[str, ...]  # covers: authors or artists


def _class_styles(tax: Taxonomy, classes: np.ndarray, seed: int) -> dict[int, _ClassStyle]:
    rng = np.random.default_rng([seed, 1])
    pool = sorted(set(FRENCH) | set(ENGLISH))
    styles = {}
    books, music = set(), set()
    if BOOKS in tax.level1_names:
        books = set(tax.classes_under(BOOKS).tolist())
    if MUSIC in tax.level1_names:
        music = set(tax.classes_under(MUSIC).tolist())
    # Classes of one level-2 share shape and texture; spread their hues around the circle.
    siblings: dict[int, list[int]] = {}
    for c in classes:
        siblings.setdefault(int(tax.level2_of[c]), []).append(int(c))
    for l2, members in siblings.items():
        offset = rng.random()
        for j, c in enumerate(members):
            group = "book" if c in books else "music" if c in music else "generic"
            vocab = tuple(rng.choice(pool, 6, replace=False).tolist())
            people = tuple(f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}" for _ in range(3))
            styles[c] = _ClassStyle(group, int(tax.level1_of[c]), l2, (offset + j / len(members)) % 1.0,
                                    vocab, people)
    return styles


def _plan(cfg: SynthConfig, n_classes_total: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([cfg.seed, 0])
    n_cls = n_classes_total if cfg.classes is None else min(cfg.classes, n_classes_total)
    classes = np.sort(rng.choice(n_classes_total, n_cls, replace=False)) if n_cls < n_classes_total \
        else np.arange(n_classes_total)
    weights = 1.0 / (1.0 + rng.permutation(n_cls)) ** cfg.tail
    weights /= weights.sum()
    # The class mix drifts slowly over the id range (two cycles, a phase per class); runs of one class
    # over consecutive ids only when asked (id_run_length > 1).
    phase = rng.random(n_cls)
    labels = np.empty(cfg.products, np.int64)
    filled = 0
    while filled < cfg.products:
        at = filled / cfg.products
        mix = weights * (1 + cfg.id_drift * np.sin(2 * np.pi * (2 * at + phase)))
        run = min(int(rng.geometric(1.0 / cfg.id_run_length)), cfg.products - filled)
        labels[filled:filled + run] = classes[rng.choice(n_cls, p=mix / mix.sum())]
        filled += run
    ids = 10 + np.cumsum(rng.integers(1, 4, cfg.products))
    n_pics = rng.choice(4, cfg.products, p=PICTURES_PER_PRODUCT_P) + 1
    is_test = rng.random(cfg.products) < cfg.test_fraction
    if cfg.products > 1 and is_test.all():
        is_test[0] = False
    kind = rng.random((cfg.products, 4))  # < placeholder_rate: placeholder; < +duplicate: stock picture
    stock = rng.integers(0, 4, (cfg.products, 4))
    return {"classes": classes, "labels": labels, "ids": ids, "n_pics": n_pics, "is_test": is_test,
            "kind": kind, "stock": stock}


# ---------------------------------------------------------------------------------------------
# drawing


def _jpeg(img: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


_YY, _XX = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _texture_mask(texture: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean (SIZE, SIZE) pattern of a level-2 texture: kind, angle and period come from its number."""
    kind = texture % 5
    angle = (texture // 5) % 6 * math.pi / 6 + rng.normal(0, 0.05)
    period = 8 + 4 * ((texture // 30) % 4)
    u = _XX * math.cos(angle) + _YY * math.sin(angle)
    v = -_XX * math.sin(angle) + _YY * math.cos(angle)
    if kind == 0:
        return np.ones((SIZE, SIZE), bool)
    if kind == 1:
        return (u % period) < period / 2
    if kind == 2:
        return ((u % period) - period / 2) ** 2 + ((v % period) - period / 2) ** 2 < (period / 3.2) ** 2
    if kind == 3:
        return ((u // period + v // period) % 2) == 0
    return ((u % period) < 2.5) | ((v % period) < 2.5)


def _shape_polygon(shape: int, cx: float, cy: float, r: float, rot: float) -> list[tuple[float, float]]:
    """Outline of a level-1 shape family: polygons, stars and ellipses, parametrised by number."""
    kind, k = shape % 3, 3 + (shape // 3) % 6
    if kind == 0:  # regular polygon with k corners
        pts = [(r, 2 * math.pi * i / k) for i in range(k)]
    elif kind == 1:  # star with k points
        pts = [(r if i % 2 == 0 else r * 0.45, math.pi * i / k) for i in range(2 * k)]
    else:  # ellipse of aspect depending on k
        aspect = 0.45 + 0.08 * (k - 3)
        pts = [(r * math.sqrt(1 / (math.cos(t) ** 2 + (math.sin(t) / aspect) ** 2)), t)
               for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    return [(cx + d * math.cos(t + rot), cy + d * math.sin(t + rot)) for d, t in pts]


def _background(rng: np.random.Generator, noise: float) -> np.ndarray:
    base = np.array(hsv_rgb(rng.random(), 0.15 * noise * rng.random(), 0.85 + 0.15 * rng.random()), np.float32)
    grad = (rng.normal(0, 25 * noise) * (_YY / SIZE - 0.5))[..., None]
    return np.clip(base + grad, 0, 255)


def _draw_generic(style: _ClassStyle, rng: np.random.Generator, noise: float) -> Image.Image:
    canvas = _background(rng, noise)
    hue = style.hue + rng.normal(0, 0.025 * noise)
    fg = np.array(hsv_rgb(hue, 0.75 + 0.2 * rng.random(), 0.55 + 0.4 * rng.random()), np.float32)
    fg2 = np.array(hsv_rgb(hue + 0.5, 0.3, 0.95), np.float32)
    pattern = _texture_mask(style.texture, rng)
    r = SIZE * (0.28 + 0.12 * rng.random() * (0.5 + noise))
    cx = SIZE / 2 + rng.normal(0, 18 * noise)
    cy = SIZE / 2 + rng.normal(0, 18 * noise)
    mask_img = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(mask_img).polygon(_shape_polygon(style.shape, cx, cy, r, rng.random() * 2 * math.pi), fill=255)
    mask = np.asarray(mask_img) > 0
    fill = np.where(pattern[..., None], fg, fg2)
    canvas[mask] = fill[mask]
    img = Image.fromarray(canvas.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.poisson(3 * noise)):  # clutter: small shapes of any colour
        x, y, s = rng.integers(0, SIZE, 2).tolist() + [int(rng.integers(6, 22))]
        draw.ellipse([x, y, x + s, y + s], fill=hsv_rgb(rng.random(), rng.random(), rng.random()))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 10 * noise, (SIZE, SIZE, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _cover_words(style: _ClassStyle, rng: np.random.Generator, strength: float) -> tuple[str, str]:
    """Title and author/artist of one product: class words with probability ``strength``."""
    pool = FRENCH if rng.random() < 0.5 else ENGLISH
    words = []
    for _ in range(int(rng.integers(2, 4))):
        words.append(str(rng.choice(style.vocab)) if rng.random() < strength else str(rng.choice(pool)))
    if rng.random() < 0.4:
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(FILLER)))
    person = str(rng.choice(style.people)) if rng.random() < strength else \
        f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
    return " ".join(words), person


def _class_words(tax: Taxonomy, style: _ClassStyle, cls: int) -> list[str]:
    """The words a class's titles draw from: its level-3 name's words and its own vocabulary."""
    name = [w for w in "".join(ch if ch.isalnum() else " " for ch in tax.level3_names[cls].lower()).split()
            if len(w) > 1]
    return name + list(style.vocab)


def _titles(cfg: SynthConfig, tax: Taxonomy, plan: dict, styles: dict[int, _ClassStyle]) -> list[str | None]:
    """One title per product, None for the ``1 - titles`` share without one: 1-3 words of its class
    (each replaced by any word with probability ``1 - text_strength``), a brand (70%) and a colour (50%)."""
    if cfg.titles <= 0:
        return [None] * cfg.products
    rng = np.random.default_rng([cfg.seed, 5])  # a stream of its own: pictures stay the same bytes
    pool = sorted(set(FRENCH) | set(ENGLISH))
    words = {c: _class_words(tax, styles[c], c) for c in styles}
    out: list[str | None] = []
    for label in plan["labels"].tolist():
        if rng.random() >= cfg.titles:
            out.append(None)
            continue
        own = [str(rng.choice(words[label])) if rng.random() < cfg.text_strength else str(rng.choice(pool))
               for _ in range(int(rng.integers(1, 4)))]
        colour = [str(rng.choice(COLOURS))] if rng.random() < 0.5 else []
        brand = [str(rng.choice(BRANDS))] if rng.random() < 0.7 else []
        out.append(" ".join(brand + colour + own).capitalize())
    return out


def _placeholders(quality: int) -> list[bytes]:
    """'Picture not available' stand-ins shared by every class, as in the real dumps."""
    blank = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    na = Image.new("RGB", (SIZE, SIZE), (240, 240, 240))
    d = ImageDraw.Draw(na)
    font = load_font(0, 16)
    d.text((22, 70), "IMAGE NON", font=font, fill=(120, 120, 120))
    d.text((22, 92), "DISPONIBLE", font=font, fill=(120, 120, 120))
    q = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    ImageDraw.Draw(q).text((62, 40), "?", font=load_font(1, 90), fill=(180, 180, 180))
    return [_jpeg(img, quality) for img in (blank, na, q)]


# ---------------------------------------------------------------------------------------------
# worker side: one product -> its JPEG pictures


class _Painter:
    """Draws products (the forked workers each hold one, inherited: nothing pickled): the settings, the class
    styles, the placeholder pictures, and the stock pictures drawn so far (the exact duplicates several
    products share, drawn once per process)."""

    def __init__(self, cfg: SynthConfig, styles: dict[int, _ClassStyle]):
        self.cfg, self.styles = cfg, styles
        self.placeholders = _placeholders(cfg.jpeg_quality)
        self.stock: dict[tuple[int, int], bytes] = {}

    def stock_picture(self, cls: int, k: int) -> bytes:
        """Picture ``k`` of a class's stock."""
        if (cls, k) not in self.stock:
            cfg, style = self.cfg, self.styles[cls]
            rng = np.random.default_rng([cfg.seed, 2, cls, k])
            words = _cover_words(style, rng, cfg.text_strength) if style.group != "generic" else None
            self.stock[(cls, k)] = _jpeg(_draw_product_view(style, rng, cfg, words), cfg.jpeg_quality)
        return self.stock[(cls, k)]

    def product(self, job: tuple[int, int, int, np.ndarray, np.ndarray, Path | None]) -> list[bytes]:
        number, cls, n_pics, kind, stock, cover = job
        cfg, style = self.cfg, self.styles[cls]
        if cover is not None:  # a real cover stands for the drawn one
            from etalage.synth.real_covers import cover_jpeg

            return [cover_jpeg(cover, cfg.jpeg_quality)]
        rng = np.random.default_rng([cfg.seed, 3, number])
        words = _cover_words(style, rng, cfg.text_strength) if style.group != "generic" else None
        pictures = []
        for j in range(n_pics):
            if kind[j] < cfg.placeholder_rate:
                pictures.append(self.placeholders[int(stock[j]) % len(self.placeholders)])
            elif kind[j] < cfg.placeholder_rate + cfg.duplicate_rate:
                pictures.append(self.stock_picture(cls, int(stock[j])))
            else:
                pictures.append(_jpeg(_draw_product_view(style, rng, cfg, words), cfg.jpeg_quality))
        return pictures

    def products(self, jobs: list) -> list[list[bytes]]:
        return [self.product(job) for job in jobs]


def _draw_product_view(style: _ClassStyle, rng: np.random.Generator, cfg: SynthConfig,
                       words: tuple[str, str] | None) -> Image.Image:
    if style.group == "generic":
        return _draw_generic(style, rng, cfg.noise)
    return draw_cover(words[0], words[1], rng, style.group)


# ---------------------------------------------------------------------------------------------


def _cover_sources(cfg: SynthConfig) -> dict:
    from etalage.synth.real_covers import CoverSource

    sources = {}
    if cfg.book_covers:
        sources[BOOKS] = CoverSource.open(cfg.book_covers, BOOKS)
    if cfg.music_covers:
        sources[MUSIC] = CoverSource.open(cfg.music_covers, MUSIC)
    return sources


def _real_cover_plan(sources: dict, tax: Taxonomy, plan: dict, seed: int) -> dict[int, Path]:
    """Product number -> real cover file, for the products of the classes the covers stand for."""
    out: dict[int, Path] = {}
    for src in sources.values():
        by_class = {}
        for names in src.files:
            matches = [c for c in range(tax.n_classes) if tax.names_of(c) == names]
            if not matches:
                raise ConfigError(f"the taxonomy has no class {' / '.join(names)} for the covers of {src.folder}")
            by_class[names] = np.flatnonzero(plan["labels"] == matches[0])
        out.update(src.assign(by_class, seed))
    return out


def _add_title(doc: dict, title: str | None) -> None:
    """The title goes last, as ``etalage pack`` writes it (the index reads it on its fast path)."""
    if title:
        doc["title"] = title


def write_synthetic_catalogue(out_dir: str | Path, cfg: SynthConfig, taxonomy: Taxonomy | None = None,
                              progress: bool = False) -> dict:
    """Write ``train.bson``, ``test.bson``, ``category_names.csv``, ``sample_submission.csv`` and
    ``test_labels.csv`` under ``out_dir``; returns a summary (counts per file, config)."""
    import bson

    cfg.check()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sources = _cover_sources(cfg)
    tax = taxonomy or default_taxonomy({g: list(src.files) for g, src in sources.items()})
    plan = _plan(cfg, tax.n_classes)
    styles = _class_styles(tax, plan["classes"], cfg.seed)
    real = _real_cover_plan(sources, tax, plan, cfg.seed)
    titles = _titles(cfg, tax, plan, styles)
    jobs = [(i, int(plan["labels"][i]), 1 if i in real else int(plan["n_pics"][i]), plan["kind"][i],
             plan["stock"][i], real.get(i)) for i in range(cfg.products)]
    workers = max(1, cfg.workers or usable_cpus())
    bar = progress_bar(total=cfg.products, unit="product", desc="synth", enabled=progress)
    counts = {"train": 0, "test": 0, "pictures": 0, "titles": 0}
    cat_ids = tax.category_ids
    painter = _Painter(cfg, styles)
    batches = [jobs[i:i + 16] for i in range(0, len(jobs), 16)]
    results = (p for batch in map_forked(lambda: painter.products, batches, workers) for p in batch)
    with atomic_write(out_dir / "train.bson") as train_fh, atomic_write(out_dir / "test.bson") as test_fh:
        try:
            for i, pictures in enumerate(results):
                doc = {"_id": int(plan["ids"][i]), "imgs": [{"picture": p} for p in pictures]}
                if plan["is_test"][i]:
                    _add_title(doc, titles[i])
                    test_fh.write(bson.encode(doc))
                    counts["test"] += 1
                else:
                    doc["category_id"] = int(cat_ids[plan["labels"][i]])
                    _add_title(doc, titles[i])
                    train_fh.write(bson.encode(doc))
                    counts["train"] += 1
                counts["pictures"] += len(pictures)
                counts["titles"] += titles[i] is not None
                bar.update(1)
        finally:
            results.close()
            bar.close()
    tax.save(out_dir / "category_names.csv")
    test_rows = np.flatnonzero(plan["is_test"])
    with atomic_write(out_dir / "test_labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["_id", "category_id"])
        w.writerows([int(plan["ids"][i]), int(cat_ids[plan["labels"][i]])] for i in test_rows)
    with atomic_write(out_dir / "sample_submission.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["_id", "category_id"])
        w.writerows([int(plan["ids"][i]), int(cat_ids[0])] for i in test_rows)
    return {"out": str(out_dir), "config": asdict(cfg), "classes_used": int(len(plan["classes"])),
            "real_covers": len(real), **counts}
