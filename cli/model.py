"""Model commands: train, predict, submit (torch imported inside)."""

from __future__ import annotations

import argparse
from pathlib import Path

from etalage.cli.options import (
    compute_of,
    compute_options,
    engine_of,
    engine_options,
    id_prior_of,
    leaf,
    pipeline_options,
    save_resolved,
)
from etalage.options import AUGMENTATIONS, KEEP_CHOICES, PICTURE_POOLINGS, RESIZE_MODES, SCHEDULES, TTA_MODES


def register(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("train",), cmd_train,
             "train the multi-picture CNN on a labelled BSON dump (one process or torchrun)",
             "Train the core: a timm backbone on every picture, pooling over each product's 1-4 pictures, a class "
             "head over the taxonomy plus level-1/level-2 heads. Prints one line per validation (epoch, loss, top-1 "
             "per level, pictures/s, time left). Writes RUN/config.json, RUN/config.yaml (these options, for "
             "--config), RUN/metrics.jsonl (the raw numbers of every validation), RUN/curves.png, RUN/checkpoint.pt "
             "and, when done, RUN/model.pt. With pretrained weights the run first reads every product once through "
             "the pretrained backbone for its linear probe: groups of near-duplicates held out together for "
             "validation (--val-groups), the heads started as the probe (--probe-init), and model.pt the probe when "
             "it validates better (--keep-probe); that time comes out of --max-minutes, and a pass that would take "
             "over a quarter of it (and over a minute) is given up after its first batches (the heads then start "
             "at random and the validation part is random). Several GPUs or machines: "
             "torchrun --nproc_per_node N -m etalage.cli train ... (DDP; rank 0 reads and fits the probe).")
    _train_data(p)
    _train_recipe(p)
    _train_schedule(p)
    _train_machine(p)
    _add_predict(sub, handlers)
    _add_submit(sub, handlers)


def _add_predict(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("predict",), cmd_predict,
             "rank every class for each product of a BSON dump (resumable shards)",
             "Write PRED/part-*.npz: per product the top-K class indices (int32) and probabilities (float16), per "
             "picture its own top-K, level-1 probabilities and optionally the pooled embedding; and PRED/ranking.parquet "
             "(product id, rank, category id, class index, probability) for pandas, polars or duckdb. Finished "
             "chunks are not redone after a kill; --shard i/n runs one slice (one machine each, same --out).")
    p.add_argument("--run", required=True, help="trained run directory (RUN/model.pt)")
    p.add_argument("--data", required=True, metavar="FILE.bson", help="the dump to predict")
    p.add_argument("--out", required=True, metavar="PRED", help="prediction directory")
    p.add_argument("--topk", type=int, default=20, help="classes kept per product")
    p.add_argument("--picture-topk", type=int, default=5, help="classes kept for each picture")
    p.add_argument("--tta", default="none", choices=TTA_MODES, help="test-time augmentation")
    p.add_argument("--shard", default="0/1", help="i/n: predict only slice i of n")
    p.add_argument("--embedding", action="store_true", help="also store the pooled embedding (float16)")
    compute_options(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    engine_options(p)


def _add_submit(sub, handlers: dict) -> None:
    p = leaf(sub, handlers, ("submit",), cmd_submit, "write a Kaggle submission (_id,category_id) for a test dump",
             "With --fusion: the full pipeline, index -> core predictions -> specialists on gated products -> "
             "fusion -> submission.csv, every stage resumable in WORK. --shard i/n runs one slice (one machine "
             "each, same WORK on shared storage) and --merge writes the submission once every slice is done. "
             "Without --fusion: core only (--run; several --run are averaged). The submission is checked (every "
             "test product once, in file order, categories of the taxonomy) and written atomically.")
    pipeline_options(p)
    p.add_argument("--out", required=True, metavar="submission.csv", help="the submission to write")
    p.add_argument("--merge", action="store_true", help="only assemble the slices' outputs into --out")


def _train_data(p) -> None:
    from etalage.core.config import TrainConfig

    d = TrainConfig(train="", out="")
    p.add_argument("--train", required=True, metavar="FILE.bson", help="labelled training dump")
    p.add_argument("--taxonomy", help="category_names.csv (default: the one beside the training file)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--backbone", default=d.backbone, help="any timm model name (offline weights: docs/models.md)")
    p.add_argument("--weights", default=d.weights,
                   help="'imagenet' (offline package weights), 'none' (random init) or a state-dict file")
    p.add_argument("--picture-pooling", default=d.picture_pooling, choices=PICTURE_POOLINGS,
                   help="how a product's pictures are combined: a learned gate per picture, attention, mean or max "
                        "of their features, the mean of their probabilities, or one mosaic of them")
    p.add_argument("--picture-size", type=int, default=d.picture_size,
                   help="side every picture is brought to (default: from the dump's pictures, their median longest "
                        "side kept between 96 and 128 on a CPU and between 96 and 180 on a GPU)")
    p.add_argument("--crop", type=int, default=d.crop,
                   help="random training crop (default: 7/8 of the picture side); evaluation uses the whole picture")
    p.add_argument("--resize", default=d.resize, choices=RESIZE_MODES,
                   help="how a non-square picture becomes a square: letterbox on white (aspect kept) or stretch")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction,
                   help="held-out products, stratified by class (fusion trains on them)")
    p.add_argument("--folds", type=int, help="split the products into K stratified folds instead: each fold run "
                                              "holds one out, and together they predict every training product "
                                              "out of fold (fusion and audit learn from all of them)")
    p.add_argument("--fold", help="with --folds: the fold to hold out (0..K-1), or 'all' (the default): the K runs "
                                  "one after the other into RUN/fold0 ..., --max-minutes each")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (split, order, augmentation)")


def _train_recipe(p) -> None:
    from etalage.core.config import TrainConfig

    d = TrainConfig(train="", out="")
    p.add_argument("--augment", default=d.augment, choices=AUGMENTATIONS,
                   help="training augmentation: random crop and flip, random resized crops, or crop-flip then "
                        "torchvision's TrivialAugmentWide / RandAugment")
    p.add_argument("--mixup", type=float, default=d.mixup, help="mixup between products, Beta(a, a) (0: off)")
    p.add_argument("--cutmix", type=float, default=d.cutmix, help="cutmix between products, Beta(a, a) (0: off)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="of the class loss, 0-1")
    p.add_argument("--dropout", type=float, default=d.dropout, help="before the heads, 0-1")
    p.add_argument("--freeze", type=int, default=d.freeze,
                   help="leading backbone layer groups never trained (1: the stem; 1 + N: and N stages; default: 3 "
                        "with pretrained weights, 0 with --weights none; 0 fine-tunes the whole backbone)")
    p.add_argument("--layer-decay", type=float, default=d.layer_decay,
                   help="learning-rate factor per backbone layer group below the heads (1: one rate)")
    p.add_argument("--ema", type=float, default=d.ema,
                   help="decay of an exponential moving average of the weights, evaluated and kept (0: off)")
    p.add_argument("--keep", default=d.keep, choices=KEEP_CHOICES,
                   help="weights model.pt keeps: the last, or the best validation top-1 seen")
    p.add_argument("--probe-init", action=argparse.BooleanOptionalAction, default=d.probe_init,
                   help="with pretrained weights: start the heads as logistic regressions fitted on the training "
                        "products' pretrained features (LP-FT), so the fine-tune starts from the linear probe")
    p.add_argument("--keep-probe", action=argparse.BooleanOptionalAction, default=d.keep_probe,
                   help="with pretrained weights: at the end, model.pt is whichever validates best (the mean of the "
                        "three levels' top-1) of the fine-tuned network, that linear probe (the pretrained backbone "
                        "and the fitted heads) and the mean of their probabilities (one network of the two, "
                        "predicting at the probe's side); metrics.jsonl's last line says which was kept and why")
    p.add_argument("--val-groups", type=float, default=d.val_groups,
                   help="with pretrained weights: hold out whole groups of near-duplicate products (one class, "
                        "pretrained features at least this cosine-similar: photos of one session) so validation "
                        "scores what training never saw (0: a random stratified part)")
    p.add_argument("--probe-size", type=int, default=d.probe_size,
                   help="side the pretrained features of the probe and the groups are read at (default: the dump's "
                        "pictures' median side, 96 to 180)")
    p.add_argument("--level1-weight", type=float, default=d.level1_weight,
                   help="weight of the level-1 head's loss (0: off)")
    p.add_argument("--level2-weight", type=float, default=d.level2_weight,
                   help="weight of the level-2 head's loss (0: off)")


def _train_schedule(p) -> None:
    from etalage.core.config import TrainConfig

    d = TrainConfig(train="", out="")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="products per batch and process")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help="passes over the training products (default: 3; with --max-minutes, as many as fit)")
    p.add_argument("--max-minutes", type=float, help="wall-clock budget; the schedule (warm-up included) is fitted "
                                                     "into it")
    p.add_argument("--lr", type=float, default=d.lr, help="peak AdamW learning rate")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW weight decay (not on biases)")
    p.add_argument("--warmup", type=float, default=d.warmup, help="share of the steps spent warming the rate up")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES,
                   help="cosine decay, or keep the rate and grow the batch (1x, 2x, 4x by accumulation)")
    p.add_argument("--head-epochs", type=float, default=d.head_epochs,
                   help="passes training the heads only (backbone frozen) before the fine-tune (at most a quarter "
                        "of --max-minutes)")
    p.add_argument("--eval-every", type=float, default=d.eval_every,
                   help="epochs between validations (metrics.jsonl lines, curves.png points)")


def _train_machine(p) -> None:
    from etalage.core.config import TrainConfig

    d = TrainConfig(train="", out="")
    p.add_argument("--workers", type=int, help="DataLoader worker processes (default: none on CPU, most cores on "
                                               "CUDA)")
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on the CPU, where it is faster; off on CUDA, where it is slower "
                        "with varying pictures per batch)")
    p.add_argument("--map-cache-gb", type=float, default=d.map_cache_gb,
                   help="keep the frozen layer groups' output of every training picture (two views, memory-mapped "
                        "in the run folder) so that later epochs skip decoding and those layers, training on "
                        "crops of the kept maps; the most GiB it may take (0: off; 96 KiB a picture with the default "
                        "backbone at 128 px and --freeze 3). A run that would need more, or with --augment "
                        "resized-crop/trivial/randaugment, trains on pictures")
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
    from etalage.core.probe import KEPT_WORDS
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
    elif m.get("kept") in ("probe", "ensemble"):
        who, nan = m["kept"], float("nan")
        print(f"{args.out}: the {KEPT_WORDS[who]} kept, validation top-1 {m.get(f'{who}_val_top1', nan):.4f} "
              f"(level-1 {m.get(f'{who}_val_level1_top1', nan):.4f}) against the fine-tune's "
              f"{m.get('val_top1', float('nan')):.4f}; model in {Path(args.out) / 'model.pt'}")
    elif m:
        print(f"{args.out}: epoch {m.get('epoch')} validation top-1 {m.get('val_top1', float('nan')):.4f} "
              f"(level-1 {m.get('val_level1_top1', float('nan')):.4f}); model in {Path(args.out) / 'model.pt'}")
    return 0


def cmd_predict(args) -> int:
    import time

    from etalage.chunks import parse_shard
    from etalage.core.predict import PredictOptions
    from etalage.pipeline.predict import predict_core

    t0 = time.perf_counter()
    with engine_of(args) as engine:
        ranking = predict_core(args.run, args.data, args.out, PredictOptions(args.topk, args.picture_topk,
                                                                             args.embedding),
                               args.tta, parse_shard(args.shard), compute_of(args), engine)
    dt = time.perf_counter() - t0
    if ranking is None:
        print(f"{args.out}: shard {args.shard} done in {dt:.1f}s; other shards still to run")
    else:
        print(f"{args.out}: {len(ranking)} products ranked (top-{ranking.topk_class.shape[1]}) in {dt:.1f}s; "
              f"{Path(args.out) / 'ranking.parquet'}")
    return 0


def job_settings(args):
    """A prediction job's shard, chunk and OCR cache from its flags."""
    from etalage.chunks import parse_shard
    from etalage.pipeline.predict import JobSettings

    return JobSettings(parse_shard(args.shard), args.chunk, Path(args.ocr_cache) if args.ocr_cache else None,
                       id_prior=id_prior_of(args))


def cmd_submit(args) -> int:
    import time

    from etalage.pipeline.submit import SubmitOptions, submit

    t0 = time.perf_counter()
    options = SubmitOptions(args.train, args.specialists, args.tta, args.topk, args.merge)
    with engine_of(args) as engine:
        res = submit(args.data, args.out, args.fusion, args.run, args.work, job_settings(args), options,
                     compute_of(args), engine)
    if res.work.path.exists():
        save_resolved(args, res.work.path / "config.yaml")
    if res.submission is None:
        print(f"{res.work}: shard {args.shard} done in {time.perf_counter() - t0:.1f}s; other shards still to run, "
              f"then `etalage submit ... --merge`")
        return 0
    detail = "fused; stage outputs in" if res.mode == "fused" else "core only; predictions in"
    print(f"{res.submission}: {res.products} products in {time.perf_counter() - t0:.1f}s ({detail} {res.work})")
    return 0
