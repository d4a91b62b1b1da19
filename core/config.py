"""The settings of a core training run (``RUN/config.json``), torch-free so that the command line and
the run folder can read them without loading the network."""

from __future__ import annotations

from dataclasses import dataclass, fields

from etalage.errors import ConfigError
from etalage.options import PICTURE_FUSIONS, SCHEDULES, check_choice


@dataclass
class TrainConfig:
    train: str
    out: str
    taxonomy: str | None = None          # default: category_names.csv beside the training file
    backbone: str = "efficientnet_lite0"
    weights: str | None = "imagenet"     # "imagenet" (offline package), "none", or a state-dict path
    picture_fusion: str = "gate"         # how a product's pictures are combined (PICTURE_FUSIONS)
    picture_size: int = 180              # pictures are resized to this side (180 = as stored)
    crop: int = 160                      # random training crops; evaluation sees the whole picture
    batch_size: int = 64                 # products per batch (per process)
    epochs: float = 3.0
    max_minutes: float | None = None
    lr: float = 1e-3
    weight_decay: float = 0.02
    warmup: float = 0.05                 # share of the steps spent warming up
    schedule: str = "cosine"
    level1_weight: float = 0.2
    level2_weight: float = 0.2
    label_smoothing: float = 0.0
    dropout: float = 0.2
    val_fraction: float = 0.05
    seed: int = 0
    workers: int | None = None
    device: str = "auto"
    compile: bool = False
    # NHWC memory layout on CUDA. Off by default: on an H100 with bf16, efficientnet_lite0 trained at
    # 68 pictures/s in channels_last against 2,273 in the default layout, because every new picture
    # count per batch sends cuDNN looking for kernels again.
    channels_last: bool = False
    checkpoint_minutes: float = 10.0
    stop_after_steps: int | None = None  # pause after this many steps of this call (continue with resume=True)

    def check(self) -> None:
        check_choice(self.picture_fusion, PICTURE_FUSIONS, "--picture-fusion")
        check_choice(self.schedule, SCHEDULES, "--schedule")
        if self.crop > self.picture_size:
            raise ConfigError(f"--crop {self.crop} is larger than --picture-size {self.picture_size}")
        if self.batch_size < 1 or self.epochs <= 0:
            raise ConfigError("--batch-size must be >= 1 and --epochs > 0")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1 or not 0 <= self.dropout < 1:
            raise ConfigError("--warmup, --label-smoothing and --dropout must be in [0, 1)")

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        """From a saved ``config.json`` (older runs wrote the picture fusion as ``fusion``)."""
        raw = dict(raw)
        if "fusion" in raw and "picture_fusion" not in raw:
            raw["picture_fusion"] = raw.pop("fusion")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


# Settings a resumed run must share with the run it continues.
RESUME_INVARIANTS = ("backbone", "picture_fusion", "picture_size", "crop", "batch_size", "seed", "val_fraction",
                     "schedule")


