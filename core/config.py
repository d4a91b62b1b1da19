"""The settings of a core training run (``RUN/config.json``), torch-free so that the command line and
the run folder can read them without loading the network."""

from __future__ import annotations

from dataclasses import dataclass, fields

from etalage.errors import ConfigError
from etalage.options import (
    AUGMENTATIONS,
    KEEP_CHOICES,
    PICTURE_POOLINGS,
    RESIZE_MODES,
    SCHEDULES,
    check_choice,
)

DEFAULT_EPOCHS = 3.0
BUDGET_EPOCHS = 1000.0  # with --max-minutes and no --epochs: the budget, not a pass count, ends the run


@dataclass
class TrainConfig:
    train: str
    out: str
    taxonomy: str | None = None          # default: category_names.csv beside the training file
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"     # "imagenet" (offline package), "none", or a state-dict path
    picture_pooling: str = "gate"        # how a product's pictures are pooled (PICTURE_POOLINGS)
    picture_size: int | None = None      # side pictures are brought to (None: from the dump, see auto_picture_size)
    crop: int | None = None              # random training crops (None: 7/8 of picture_size); evaluation sees
                                         # the whole picture
    resize: str = "letterbox"            # how a non-square picture becomes a square (RESIZE_MODES)
    augment: str = "crop-flip"           # training augmentation (AUGMENTATIONS)
    mixup: float = 0.0                   # Beta(a, a) of mixup between products (0: off)
    cutmix: float = 0.0                  # Beta(a, a) of cutmix between products (0: off)
    batch_size: int = 32                 # products per batch (per process); 32 beat 64 on real photos within
                                         # CPU budgets (twice the steps; docs/benchmarks.md, "Core on real photos")
    epochs: float | None = None          # None: 3, or with max_minutes as many as the budget allows
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup: float = 0.05                 # share of the steps spent warming up
    schedule: str = "cosine"
    level1_weight: float = 0.2
    level2_weight: float = 0.2
    label_smoothing: float = 0.0
    dropout: float = 0.2
    head_epochs: float = 0.0             # passes over the data training the heads only (backbone frozen) first
    freeze: int | None = None            # leading backbone layer groups (stem, then stages) never trained
                                         # (None: frozen_groups())
    layer_decay: float = 1.0             # learning rate x layer_decay per backbone stage below the heads
    ema: float = 0.0                     # decay of an exponential moving average of the weights (0: off)
    keep: str = "last"                   # the weights model.pt keeps: the last, or the best validation top-1
    eval_every: float = 1.0              # epochs between validations (the learning curve's points)
    val_fraction: float = 0.05
    folds: int | None = None             # K: the products are split into K stratified folds and the run
    fold: int | None = None              # holds fold ``fold`` out (instead of a val_fraction share)
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    compile: bool = False
    # NHWC memory layout. None: on the CPU, where oneDNN's convolutions run 1.6x faster in it
    # (efficientnet_lite0 training at 128px on 2 cores), and not on CUDA, where with bf16 on an H100 it
    # trained at 68 pictures/s against 2,273 because every new picture count per batch sends cuDNN
    # looking for kernels again.
    channels_last: bool | None = None
    # The frozen layer groups' output of every training picture kept (memory-mapped in the run folder, both
    # views: 96 KiB a picture for EfficientNet-Lite0 at 128 px with 3 groups frozen), so that epochs after a
    # picture's first skip decoding it and running those layers; the most GiB it may take (0: off, the
    # default until its accuracy per epoch is measured against the pixel path on real photos). Over it, or
    # with an augmentation done on pixels, the run trains on pictures (etalage.core.mapcache).
    map_cache_gb: float = 0.0
    # The pretrained backbone's linear probe (etalage.core.probe), with pretrained weights (imagenet or a file)
    # and up to PROBE_MAX_CELLS products x classes: every training product read once through the pretrained
    # backbone before the fine-tune (its time comes out of --max-minutes), for three uses.
    probe_init: bool = True              # the heads start as the probe's logistic regressions (LP-FT)
    keep_probe: bool = True              # model.pt is the probe when it validates better than the fine-tune
    # Cosine similarity of those features at which two products of one class are near-duplicates (photos of
    # one session), held out together so that validation scores sessions training never saw (0: a random
    # stratified part). 0.8: on GroceryStore's training photos a part held out that way is as far from
    # training as its official val is (nearest-neighbour top-1 0.63 against 0.58; random part 0.95). Not with
    # folds, which stay stratified by class (etalage.core.probe.validation_mask).
    val_groups: float = 0.8
    probe_size: int | None = None        # side the probe reads pictures at (None: the dump's, 96 to 180 px)
    checkpoint_minutes: float = 10.0
    stop_after_steps: int | None = None  # pause after this many steps of this call (continue with resume=True)

    def check(self) -> None:
        check_choice(self.picture_pooling, PICTURE_POOLINGS, "--picture-pooling")
        check_choice(self.schedule, SCHEDULES, "--schedule")
        check_choice(self.resize, RESIZE_MODES, "--resize")
        check_choice(self.augment, AUGMENTATIONS, "--augment")
        check_choice(self.keep, KEEP_CHOICES, "--keep")
        if self.picture_size is not None and not 16 <= self.picture_size <= 1024:
            raise ConfigError(f"--picture-size {self.picture_size}: expected 16 to 1024 pixels")
        if self.crop is not None and self.picture_size is not None and self.crop > self.picture_size:
            raise ConfigError(f"--crop {self.crop} is larger than --picture-size {self.picture_size}")
        if self.mixup < 0 or self.cutmix < 0 or self.ema < 0 or self.ema >= 1 or self.head_epochs < 0:
            raise ConfigError("--mixup and --cutmix must be >= 0, --ema in [0, 1), --head-epochs >= 0")
        if not 0 < self.layer_decay <= 1 or (self.freeze is not None and self.freeze < 0) or self.eval_every <= 0:
            raise ConfigError("--layer-decay must be in (0, 1], --freeze >= 0 and --eval-every > 0")
        if self.batch_size < 1 or (self.epochs is not None and self.epochs <= 0):
            raise ConfigError("--batch-size must be >= 1 and --epochs > 0")
        if self.map_cache_gb < 0:
            raise ConfigError(f"--map-cache-gb must be >= 0 (0: off), got {self.map_cache_gb}")
        if self.folds is not None:
            if self.folds < 2:
                raise ConfigError(f"--folds must be at least 2, got {self.folds}")
            if self.fold is None or not 0 <= self.fold < self.folds:
                raise ConfigError(f"--fold must be one of 0..{self.folds - 1} (or all), got {self.fold}")
        elif self.fold is not None:
            raise ConfigError("--fold goes with --folds K")
        if not 0 <= self.val_groups <= 1:
            raise ConfigError(f"--val-groups must be a cosine similarity in [0, 1] (0: off), got {self.val_groups}")
        if self.probe_size is not None and not 16 <= self.probe_size <= 1024:
            raise ConfigError(f"--probe-size {self.probe_size}: expected 16 to 1024 pixels")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("--warmup, --label-smoothing and --dropout must be in [0, 1)")

    @property
    def planned_epochs(self) -> float:
        """Passes over the training products: as set, else 3, or with a time budget as many as fit."""
        if self.epochs is not None:
            return self.epochs
        return BUDGET_EPOCHS if self.max_minutes else DEFAULT_EPOCHS

    def frozen_groups(self) -> int:
        """The backbone layer groups the fine-tune leaves alone: as set, else 3 (the stem and 2 stages,
        their generic edges and textures) for pretrained weights, which trained faster and better on real
        photos within CPU budgets (docs/benchmarks.md, "Core on real photos"), and 0 for a backbone trained from
        scratch (random layers frozen would stay random)."""
        if self.freeze is not None:
            return self.freeze
        return 0 if self.weights in (None, "none") else DEFAULT_FROZEN_GROUPS

    def crop_for(self, picture_size: int) -> int:
        """The training crop: as set, else 7/8 of the side (160 of Cdiscount's 180: what the 2017 teams
        trained on), a multiple of 8."""
        return self.crop if self.crop is not None else default_crop(picture_size)

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """From a saved ``config.json`` (older runs wrote the picture pooling as ``fusion`` or
        ``picture_fusion``)."""
        raw = dict(raw)
        for old in ("picture_fusion", "fusion"):
            if old in raw and "picture_pooling" not in raw:
                raw["picture_pooling"] = raw.pop(old)
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def default_crop(picture_size: int) -> int:
    """7/8 of the side, a multiple of 8 (160 of Cdiscount's 180)."""
    return max(8, int(round(picture_size * 7 / 8 / 8)) * 8)


# Settings a resumed run must share with the run it continues.
DEFAULT_FROZEN_GROUPS = 3

RESUME_INVARIANTS = ("backbone", "picture_pooling", "picture_size", "crop", "batch_size", "seed", "val_fraction",
                     "schedule", "resize", "augment", "head_epochs", "freeze", "ema", "folds", "fold", "map_cache_gb",
                     "probe_init", "keep_probe", "val_groups", "probe_size")


