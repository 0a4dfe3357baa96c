"""1. Fuzz: generated images in every mode and format, then mutated (bytes flipped, truncated,
spliced), never raise anything but UnreadablePhoto, never take long, and decode to 32x32 RGB."""

import io
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarlab.data.images import UnreadablePhoto, decode_image, load_photo
from cifarlab.data.testset import prepare_photo

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODES = ["RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "I;16", "I", "F", "1"]
# (mode, format) pairs Pillow can write: PNG cannot write 32-bit "I" (Pillow 13), TIFF can
FORMATS = {"PNG": {"RGB", "RGBA", "L", "LA", "P", "I;16", "1"}, "JPEG": {"RGB", "L", "CMYK"},
           "GIF": {"P", "L", "1"}, "BMP": {"RGB", "L", "P", "1"},
           "TIFF": {"RGB", "RGBA", "L", "CMYK", "I;16", "I", "F", "1"},
           "WEBP": {"RGB", "RGBA"}, "PPM": {"RGB", "L"}, "TGA": {"RGB", "RGBA", "L", "P"}, "ICO": {"RGBA"}}


@st.composite
def images(draw) -> bytes:
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(sorted(FORMATS[fmt])))
    w, h = draw(st.integers(1, 80)), draw(st.integers(1, 80))
    seed = draw(st.integers(0, 2**16))
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 4), dtype=np.uint8)
    img = Image.fromarray(a, "RGBA").convert(mode if mode in ("RGB", "RGBA", "L", "LA", "P", "PA", "CMYK", "1")
                                             else "L")
    if mode in ("I;16", "I", "F"):
        img = Image.fromarray((np.asarray(img).astype(np.uint16) * 257).astype(np.uint16)).convert(mode) \
            if mode != "I;16" else Image.fromarray(np.asarray(img).astype(np.uint16) * 257)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(images()))
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["flip", "truncate", "splice", "header"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "truncate":
            del data[i:]
        elif kind == "splice":
            data[i:i] = draw(st.binary(max_size=64))
        else:  # where sizes live: make them huge
            j = min(i, 32)
            data[j:j + 2] = b"\xff\xff"
    return bytes(data)


def check(data: bytes, tmp_path) -> None:
    t0 = time.perf_counter()
    (tmp_path / "x.img").write_bytes(data)
    for read in (lambda: decode_image(data, "x.img"), lambda: load_photo(tmp_path / "x.img")):
        try:
            img = read()
        except UnreadablePhoto as e:
            assert "\n" not in str(e) and e.reason
            continue
        out = prepare_photo(img, filtered=True)
        assert img.mode == "RGB" and out.size == (32, 32) and out.mode == "RGB"
    assert time.perf_counter() - t0 < 10


@FUZZ
@given(data=images())
def test_generated_images_decode(data, tmp_path):
    check(data, tmp_path)


@FUZZ
@given(data=mutated())
def test_mutated_images_never_crash(data, tmp_path):
    check(data, tmp_path)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes_never_crash(data, tmp_path):
    check(data, tmp_path)
