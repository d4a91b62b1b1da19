"""Model commands: train, predict, submit (torch imported inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from etalage.cli.data import leaf
from etalage.cli.options import alias, save_resolved
from etalage.options import (
    AUGMENTATIONS,
    KEEP_CHOICES,
    PICTURE_POOLINGS,
    RESIZE_MODES,
    RUN_ENGINES,
    SCHEDULES,
    TTA_MODES,
)


def register(sub, handlers: dict) -> None:
    _train(leaf(sub, handlers, ("train",), cmd_train,
                "train the multi-picture CNN on a labelled BSON dump (one process or torchrun)",
                "Train the core: a timm backbone on every picture, pooling over each product's 1-4 pictures, a class "
                "head over the taxonomy plus level-1/level-2 heads. Writes RUN/config.json, RUN/config.yaml (these "
                "options, for --config), RUN/metrics.jsonl (validation product top-1 per epoch), RUN/checkpoint.pt "
                "and, when done, RUN/model.pt. Several GPUs or machines: torchrun --nproc_per_node N -m etalage.cli "
                "train ... (DDP)."))
    p = leaf(sub, handlers, ("predict",), cmd_predict,
             "rank every class for each product of a BSON dump (resumable shards)",
             "Write PRED/part-*.npz: per product the top-K class indices (int32) and probabilities (float16), per "
             "picture its own top-K, level-1 probabilities and optionally the fused embedding; and PRED/ranking.parquet "
             "(product id, rank, category id, class index, probability) for pandas, polars or duckdb. Finished "
             "chunks are not redone after a kill; --shard i/n runs one slice (one machine each, same --out).")
    p.add_argument("--run", required=True, help="trained run directory (RUN/model.pt)")
    p.add_argument("--data", required=True, metavar="FILE.bson", help="the dump to predict")
    p.add_argument("--out", required=True, metavar="PRED", help="prediction directory")
    p.add_argument("--topk", type=int, default=20, help="classes kept per product")
    p.add_argument("--picture-topk", type=int, default=5, help="classes kept for each picture")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation")
    p.add_argument("--shard", default="0/1", help="i/n: predict only slice i of n")
    p.add_argument("--embedding", action="store_true", help="also store the fused embedding (float16)")
    compute_options(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    engine_options(p)

    p = leaf(sub, handlers, ("submit",), cmd_submit, "write a Kaggle submission (_id,category_id) for a test dump",
             "With --fusion: the full pipeline, index -> core predictions -> specialists on gated products -> "
             "fusion -> submission.csv, every stage resumable in WORK. --shard i/n runs one slice (one machine "
             "each, same WORK on shared storage) and --merge writes the submission once every slice is done. "
             "Without --fusion: core only (--run). The submission is checked (every test product once, in file "
             "order, categories of the taxonomy) and written atomically.")
    pipeline_options(p)
    p.add_argument("--out", required=True, metavar="submission.csv", help="the submission to write")
    p.add_argument("--merge", action="store_true", help="only assemble the slices' outputs into --out")
    engine_options(p)


def engine_options(p, what: str = "the stages") -> None:
    """Where a job runs: this machine (local) or a Ray cluster (submit, predict, ocr)."""
    p.add_argument("--engine", default="local", choices=RUN_ENGINES,
                   help=f"local: {what} one after the other in this process (and its forked workers); ray: a Ray "
                        "Data pipeline over a cluster, the stages at once, chunk by chunk (pip install "
                        "'etalage[ray]'); the same outputs")
    ray_options(p)


def ray_options(p) -> None:
    p.add_argument("--ray-address", metavar="ADDR",
                   help="with --engine ray: join the running cluster at ADDR (`ray start --head` prints it; 'auto': "
                        "the one on this machine); unset: Ray starts on this machine for the command and stops after")
    p.add_argument("--ray-dashboard", action="store_true",
                   help="with --engine ray and no --ray-address: also start Ray's dashboard (off by default)")


def ray_settings(args):
    """The ``RaySettings`` of a command's --engine ray options (None with --engine local)."""
    if getattr(args, "engine", "local") != "ray":
        return None
    from etalage.pipeline.ray_engine import RaySettings

    return RaySettings(address=args.ray_address, dashboard=bool(args.ray_dashboard), verbose=int(args.verbose or 0))


def compute_options(p) -> None:
    p.add_argument("--batch-size", type=int, default=64, help="products per batch")
    p.add_argument("--workers", type=int, help="decoding processes (default: none on CPU, most cores on CUDA)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load model files that hold more than tensors (older etalage); they can run code: only "
                        "for files you made yourself")


def pipeline_options(p) -> None:
    """Options of the jobs that run a dump through the whole pipeline (submit, fusion predict)."""
    alias(p, "--data", "--test", required=True, metavar="FILE.bson", help="the dump to predict")
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
    compute_options(p)


def _train(p) -> None:
    from etalage.core.config import TrainConfig

    d = TrainConfig(train="", out="")
    p.add_argument("--train", required=True, metavar="FILE.bson", help="labelled training dump")
    p.add_argument("--taxonomy", help="category_names.csv (default: the one beside the training file)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--backbone", default=d.backbone, help="any timm model name")
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (offline package weights), 'none' (random init) or a state-dict file")
    alias(p, "--picture-pooling", "--picture-fusion", "--fusion", default=d.picture_pooling, choices=PICTURE_POOLINGS,
          help="how a product's pictures are combined (prob-mean: average per-picture probabilities)")
    p.add_argument("--picture-size", type=int, default=d.picture_size,
                   help="side every picture is brought to (default: from the dump's pictures, their median longest "
                        "side kept between 96 and 128 on a CPU, which measured best within CPU budgets, and between 96 and 180 on "
                        "a GPU)")
    p.add_argument("--crop", type=int, default=d.crop,
                   help="random training crop (default: 7/8 of the picture side); evaluation uses the whole picture")
    p.add_argument("--resize", default=d.resize, choices=RESIZE_MODES,
                   help="how a non-square picture becomes a square: letterbox on white (aspect kept) or stretch")
    p.add_argument("--augment", default=d.augment, choices=AUGMENTATIONS,
                   help="training augmentation: random crop and flip, random resized crops, or crop-flip then "
                        "torchvision's TrivialAugmentWide / RandAugment")
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup between products, Beta(a, a) (0: off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix between products, Beta(a, a) (0: off)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="products per batch and process (default 32, which measured best on real photos within "
                        "CPU budgets)")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help="passes over the training products (default: 3; with --max-minutes, as many as fit)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule (warm-up included) is fitted "
                                                     "into it")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (not on biases)")
    p.add_argument("--warmup", type=float, default=d.warmup, help="share of the steps spent warming the rate up")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="cosine decay, or keep the rate and grow the batch (1x, 2x, 4x by accumulation)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="of the class loss, 0-1")
    p.add_argument("--dropout", type=float, default=d.dropout, help="before the heads, 0-1")
    p.add_argument("--head-epochs", type=float, default=d.head_epochs,
                   help="passes training the heads only (backbone frozen) before the fine-tune (at most a quarter "
                        "of --max-minutes)")
    p.add_argument("--freeze", type=int, default=d.freeze,
                   help="leading backbone layer groups never trained (1: the stem; 1 + N: and N stages; default: 3 with "
                        "pretrained weights, which measured best on real photos within CPU budgets, 0 with --weights "
                        "none; 0 fine-tunes the whole backbone)")
    p.add_argument("--layer-decay", type=float, default=d.layer_decay,
                   help="learning-rate factor per backbone layer group below the heads (1: one rate)")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay of an exponential moving average of the weights, evaluated and kept (0: off)")
    p.add_argument("--keep", default=d.keep, choices=KEEP_CHOICES,
                   help="weights model.pt keeps: the last, or the best validation top-1 seen")
    p.add_argument("--eval-every", type=float, default=d.eval_every,
                   help="epochs between validations (metrics.jsonl lines, curves.png points)")
    p.add_argument("--level1-weight", type=float, default=d.level1_weight, help="weight of the level-1 head's loss "
                                                                               "(0: off)")
    p.add_argument("--level2-weight", type=float, default=d.level2_weight, help="weight of the level-2 head's loss "
                                                                               "(0: off)")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out products, stratified by class (fusion trains on them)")
    p.add_argument("--folds", type=int, help="split the products into K stratified folds instead: each fold run "
                                              "holds one out, and together they predict every training product "
                                              "out of fold (fusion and audit learn from all of them)")
    p.add_argument("--fold", help="with --folds: the fold to hold out (0..K-1), or 'all' (the default): the K runs "
                                  "one after the other into RUN/fold0 ..., --max-minutes each")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (split, order, augmentation)")
    _train_compute(p, d)


def _train_compute(p, d) -> None:
    """Where and how ``train`` computes, and how it checkpoints and resumes."""
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: none on CPU, most cores on "
                                               "CUDA)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on the CPU, 1.6x faster there; off on CUDA, slower there with "
                        "varying pictures per batch)")
    p.add_argument("--map-cache-gb", type=float, default=d.map_cache_gb,
                   help="keep the frozen layer groups' output of every training picture (two views, memory-mapped "
                        "in the run folder) so that later epochs skip decoding and those layers, training on "
                        "crops of the kept maps; the most GiB it may take (default 0: off; 96 KiB a picture "
                        "with the default backbone at 128 px and --freeze 3). A run that would need more, or "
                        "with --augment resized-crop/trivial/randaugment, trains on pictures")
    p.add_argument("--checkpoint-minutes", type=float, default=d.checkpoint_minutes,
                   help="checkpoint at least this often")
    p.add_argument("--stop-after-steps", type=int,
                   help="checkpoint and stop after this many steps of this call (run again with --resume to go on: "
                        "a long job in slices)")
    p.add_argument("--resume", action="store_true", help="continue RUN exactly where it stopped")
    p.add_argument("--trust-pickle", action="store_true",
                   help="with --resume: load a checkpoint that holds more than tensors (etalage 0.1); it can run "
                        "code: only for checkpoints you made yourself")


def cmd_train(args) -> int:
    from dataclasses import fields

    from etalage.core.config import TrainConfig
    from etalage.core.train import fold_runs, train, train_folds
    from etalage.errors import ConfigError

    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    fold = values.pop("fold")
    if args.folds and fold in (None, "all"):
        cfg = TrainConfig(**values, fold=0)
        cfg.check()
        results = train_folds(cfg, progress=not args.quiet, trust_pickle=args.trust_pickle)
        save_resolved(args, Path(args.out) / "config.yaml")
        for run, res in zip(fold_runs(args.out, args.folds), results, strict=False):
            m = res.metrics or {}
            print(f"{run}: {res.status}, validation (its fold) top-1 {m.get('val_top1', float('nan')):.4f}")
        if len(results) < args.folds or results[-1].status != "finished":
            print("paused; continue with the same command (finished folds are kept, the paused one resumes)")
        return 0
    try:
        values["fold"] = None if fold is None else int(fold)
    except ValueError:
        raise ConfigError(f"--fold must be 0..K-1 or all, got {fold!r}") from None
    cfg = TrainConfig(**values)
    res = train(cfg, resume=args.resume, progress=not args.quiet, trust_pickle=args.trust_pickle)
    save_resolved(args, Path(args.out) / "config.yaml")
    m = res.metrics
    if res.status == "paused":
        print("paused; continue with the same command and --resume")
    elif m:
        print(f"{args.out}: epoch {m.get('epoch')} validation top-1 {m.get('val_top1', float('nan')):.4f} "
              f"(level-1 {m.get('val_level1_top1', float('nan')):.4f}); model in {Path(args.out) / 'model.pt'}")
    return 0


def cmd_predict(args) -> int:
    import time

    from etalage.chunks import parse_shard
    from etalage.pipeline.stages import predict_core_file

    t0 = time.perf_counter()
    ranking = predict_core_file(args.run, args.data, args.out, topk=args.topk, picture_topk=args.picture_topk,
                                tta=args.tta, shard=parse_shard(args.shard), embedding=args.embedding,
                                batch_size=args.batch_size, workers=args.workers, device=args.device,
                                compile=args.compile, trust_pickle=args.trust_pickle, progress=not args.quiet,
                                engine=args.engine, ray=ray_settings(args))
    dt = time.perf_counter() - t0
    if ranking is None:
        print(f"{args.out}: shard {args.shard} done in {dt:.1f}s; other shards still to run")
    else:
        print(f"{args.out}: {len(ranking)} products ranked (top-{ranking.topk_class.shape[1]}) in {dt:.1f}s; "
              f"{Path(args.out) / 'ranking.parquet'}")
    return 0


def cmd_submit(args) -> int:
    import time

    from etalage.chunks import parse_shard
    from etalage.pipeline.submit import submit

    t0 = time.perf_counter()
    res = submit(args.data, args.out, fusion=args.fusion, run=args.run, train=args.train, specialists=args.specialists,
                 work=args.work, shard=parse_shard(args.shard), merge=args.merge, tta=args.tta, topk=args.topk,
                 ocr_cache=args.ocr_cache, chunk=args.chunk, device=args.device, batch_size=args.batch_size,
                 workers=args.workers, trust_pickle=args.trust_pickle, progress=not args.quiet, engine=args.engine,
                 ray=ray_settings(args))
    if res.work.path.exists():
        save_resolved(args, res.work.path / "config.yaml")
    if res.submission is None:
        print(f"{res.work}: shard {args.shard} done in {time.perf_counter() - t0:.1f}s; other shards still to run, "
              f"then `etalage submit ... --merge`")
        return 0
    detail = "fused; stage outputs in" if res.mode == "fused" else "core only; predictions in"
    print(f"{res.submission}: {res.products} products ({detail} {res.work})")
    return 0
