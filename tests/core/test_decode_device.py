"""Decoding on the device (the core on a GPU): which pictures the device decoder takes, the fall-backs to
the CPU decoder, corrupt pictures, and the pre-read chunks of the Ray engine. No GPU here: the device is
the CPU (torchvision's decoder runs there too), and stand-in decoders play nvJPEG's failures."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from etalage.core.data import (
    PictureTransform,
    decode_on_device,
    device_batch,
    device_decodable,
    jpeg_header,
    square_on_device,
)


def _jpeg(w=40, h=30, progressive=False, mode="RGB", colour=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), colour if mode == "RGB" else (10, 20, 30, 40)[: len(mode)]).save(
        buf, "JPEG", quality=90, progressive=progressive)
    return buf.getvalue()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (0, 255, 0)).save(buf, "PNG")
    return buf.getvalue()


def test_jpeg_header_and_what_the_device_takes():
    assert jpeg_header(_jpeg(40, 30))[1:] == (30, 40, 3)
    assert jpeg_header(_jpeg(40, 30))[0] in (0xC0, 0xC1)
    assert device_decodable(_jpeg())
    assert device_decodable(_jpeg(mode="L")), "grayscale: converted to RGB by the decoder"
    assert not device_decodable(_jpeg(progressive=True)), "progressive JPEGs go to the CPU decoder"
    assert not device_decodable(_jpeg(mode="CMYK")), "CMYK too"
    assert not device_decodable(_png()) and not device_decodable(b"not a picture") and not device_decodable(b"")
    assert not device_decodable(_jpeg()[:12]), "a header cut short"
    assert not device_decodable(_jpeg(3000, 20)), "over MAX_SIDE: the CPU decoder scales it down"


def test_decode_on_device_falls_back_picture_by_picture():
    good, other = _jpeg(), _jpeg(16, 16, colour=(1, 2, 3))
    out = decode_on_device([good, _png(), other, b"junk"], "cpu")
    assert out[1] is None and out[3] is None, "not for the device decoder"
    assert out[0].shape == (3, 30, 40) and out[0].dtype == torch.uint8 and out[2].shape == (3, 16, 16)

    calls = []

    def flaky(data, mode, device):
        """nvJPEG as it fails: one bad picture fails the batched call; alone, only that one fails."""
        from torchvision.io import decode_jpeg

        calls.append(type(data).__name__)
        if isinstance(data, list):
            raise RuntimeError("batched decode failed")
        if data.numel() == len(other):
            raise RuntimeError("this one")
        return decode_jpeg(data, mode=mode, device=device)

    out = decode_on_device([good, other], "cpu", decode=flaky)
    assert calls == ["list", "Tensor", "Tensor"], "the batch, then each picture alone"
    assert out[0] is not None and out[1] is None, "what the device cannot decode goes to the CPU decoder"


def test_device_batch_matches_the_cpu_path_and_counts_corrupt_pictures():
    from etalage.catalog.pictures import DecodeStats, decode_picture
    from etalage.core.data import BLANK

    transform = PictureTransform(32, 28, "letterbox", "none")
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, "JPEG", quality=95)
    pictures = [[buf.getvalue(), _png()], [b"corrupt"], [_jpeg(progressive=True)]]
    stats = DecodeStats()
    batch = device_batch(pictures, [11, 12, 13], transform, "cpu", stats)
    assert batch.pictures.shape == (4, 3, 32, 32) and batch.picture_product.tolist() == [0, 0, 1, 2]
    assert batch.corrupt == 1 and stats.corrupt == 1 and stats.examples == [(12, 0)]
    assert batch.n_products == 3
    # the CPU path's pictures for the same bytes (Pillow resizing there, the device's here: close)
    cpu = [transform(decode_picture(buf.getvalue())), transform(decode_picture(_png())), transform(BLANK),
           transform(decode_picture(_jpeg(progressive=True)))]
    diff = np.abs(batch.pictures.numpy().astype(int) - np.stack(cpu).astype(int))
    assert diff.mean() < 6 and np.percentile(diff, 99) < 40
    assert (batch.pictures[2] == 255).all(), "a product without any readable picture gets the blank one"


def test_square_on_device_letterbox_and_stretch():
    pic = torch.zeros(3, 20, 40, dtype=torch.uint8)
    lb = square_on_device(pic, 16, "letterbox")
    assert lb.shape == (3, 16, 16) and (lb[:, :4] == 255).all() and (lb[:, 12:] == 255).all()
    assert (lb[:, 5:11] == 0).all()
    st = square_on_device(pic, 16, "stretch")
    assert st.shape == (3, 16, 16) and (st == 0).all()
    same = torch.full((3, 16, 16), 7, dtype=torch.uint8)
    assert square_on_device(same, 16) is same


def test_pre_read_chunk_decodes_as_the_catalogue(synth_dir):
    """The Ray engine's read tasks read a chunk's bytes in one stretch; decoding from them is the
    catalogue's own decoding, and the chunk travels (pickled) as the bytes it holds."""
    import pickle

    from etalage.catalog import Catalog

    cat = Catalog.open(synth_dir / "test.bson")
    a, b = 10, 50
    chunk = pickle.loads(pickle.dumps(cat.read_chunk((a, b))))
    lo, hi = cat.chunk_extent((a, b))
    assert len(chunk.blob) == hi - lo and chunk.base == lo
    pre = cat.with_chunk(chunk)
    for pos in range(a, b):
        assert pre.picture_bytes(pos) == cat.picture_bytes(pos)
        assert all(np.array_equal(x, y) for x, y in zip(pre.decode(pos), cat.decode(pos), strict=True))
    assert pre.picture_bytes(0) == cat.picture_bytes(0), "outside the chunk: read from the dump"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the GPU path is tested on CPU only")
def test_device_batch_on_cuda():
    transform = PictureTransform(32, 28, "letterbox", "none")
    batch = device_batch([[_jpeg()], [_png()]], [1, 2], transform, "cuda")
    assert batch.pictures.device.type == "cuda" and batch.pictures.shape == (2, 3, 32, 32)
