"""1. Images from anywhere: every odd file a user or a web scrape produces is used correctly or
skipped with its reason, fast, in the photo test sets (load_testset) and in training folders
(load_cifar10); class-folder mistakes are reported clearly."""

import io
import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from cifarlab import CLASSES
from cifarlab.data import load_cifar10
from cifarlab.data.images import load_photo
from cifarlab.data.testset import load_testset, prepare_photo
from cifarlab.errors import UserError
from reliability_helpers import one_line_error
from testdata import write_tree

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def png_claiming(w: int, h: int) -> bytes:
    """A ~60-byte PNG whose header claims w x h pixels (a decompression bomb needs nothing more)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def exif_rotated() -> bytes:
    img = Image.new("RGB", (40, 20), RED)
    img.paste(Image.new("RGB", (20, 20), BLUE), (20, 0))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the viewer shows red on top
    return encoded(img, "JPEG", exif=exif, quality=95)


def animated_gif() -> bytes:
    frames = [Image.new("P", (16, 16), i) for i in range(3)]
    for f, colour in zip(frames, (GREEN, RED, BLUE)):
        f.putpalette(list(colour) * 256)
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


# name -> (bytes, expected: a colour at the centre (used) or a reason substring (skipped))
def zoo() -> dict[str, tuple[bytes, object]]:
    rgba = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # fully transparent: white once composited
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette(list(GREEN) + [0] * 765)
    i16 = Image.fromarray(np.full((32, 32), 40000, np.uint16))  # 16-bit grey, not clipped to white
    return {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (half(encoded(Image.new("RGB", (256, 256), RED), "JPEG")), "truncated"),
        "truncated.png": (half(encoded(Image.effect_noise((64, 64), 50), "PNG")), "Error"),
        "page.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        "notes.png": (b"just some notes\nsaved as .png\n", "text file"),
        "binary.gif": (bytes(range(256)) * 4, "not an image in a supported format"),
        "ghostscript.jpg": (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", "text file"),  # EPS: never opened
        "bomb.png": (png_claiming(50_000, 50_000), "decompression bomb"),
        "bomb_under_pillow_limit.png": (png_claiming(9_000, 9_000), "decompression bomb"),
        "too_wide.png": (png_claiming(40_000, 10), "side over"),
        "grey.png": (encoded(Image.new("L", (32, 32), 128), "PNG"), (128, 128, 128)),
        "rgba.png": (encoded(rgba, "PNG"), WHITE),
        "palette.png": (encoded(pal, "PNG"), GREEN),
        "cmyk.jpg": (encoded(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95), RED),
        "sixteen_bit.png": (encoded(i16, "PNG"), (156, 156, 156)),
        "exif_rotated.jpg": (exif_rotated(), RED),  # centre crop of the upright photo: red on top... see test
        "animated.gif": (animated_gif(), GREEN),
        "tiny.png": (encoded(Image.new("RGB", (3, 2), BLUE), "PNG"), BLUE),
        "panorama.png": (encoded(Image.new("RGB", (3000, 7), GREEN), "PNG"), GREEN),
        "no_suffix": (encoded(Image.new("RGB", (32, 32), RED), "PNG"), RED),
    }


def close(a, b, tol=8):
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


@pytest.fixture
def zoo_folder(tmp_path):
    """A photo test set: cat/ holds the zoo plus links, a FIFO and a folder; dog/ one normal photo."""
    root = tmp_path / "photos"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    for name, (data, _) in zoo().items():
        (root / "cat" / name).write_bytes(data)
    Image.new("RGB", (50, 40), BLUE).save(root / "dog" / "dog.jpg")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0junk")
    (root / "cat" / "._grey.png").write_bytes(b"AppleDouble")
    os.symlink(root / "dog" / "dog.jpg", root / "cat" / "link_to_photo.jpg")
    os.symlink(root / "cat" / "missing.jpg", root / "cat" / "broken_link.jpg")
    os.symlink("loop_b.jpg", root / "cat" / "loop_a.jpg")
    os.symlink("loop_a.jpg", root / "cat" / "loop_b.jpg")
    os.mkfifo(root / "cat" / "pipe.jpg")  # opening it would block forever
    (root / "cat" / "more").mkdir()
    os.symlink(root, root / "cat" / "more" / "up")  # a folder loop, for walkers that recurse
    return root


EXTRA = {"link_to_photo.jpg": BLUE, "broken_link.jpg": "broken symlink", "loop_a.jpg": "symlink loop",
         "loop_b.jpg": "symlink loop", "pipe.jpg": "not a regular file", "more": "a folder"}


@pytest.fixture
def watchdog():
    """Fail instead of hanging if a FIFO is ever opened."""
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("hung reading a file"))
    signal.alarm(60)
    yield
    signal.alarm(0)


def test_every_odd_file_is_used_or_skipped_with_its_reason(zoo_folder, watchdog, capsys):
    t0 = time.perf_counter()
    ts = load_testset(zoo_folder, fit="crop")
    seconds = time.perf_counter() - t0
    expected = {f"cat/{n}": e for n, (_, e) in zoo().items()} | {f"cat/{n}": e for n, e in EXTRA.items()}
    expected["dog/dog.jpg"] = BLUE
    used = dict(zip(ts.paths, ts.x))
    skipped = dict(ts.skipped)
    assert set(used) | set(skipped) == set(expected) and not set(used) & set(skipped)
    for rel, want in expected.items():
        if isinstance(want, str):
            assert rel in skipped and want in skipped[rel], (rel, skipped.get(rel), "used" if rel in used else "")
            assert "\n" not in skipped[rel]
        else:
            assert rel in used, (rel, skipped.get(rel))
            if rel != "cat/exif_rotated.jpg":
                assert close(used[rel][:, 16, 16].tolist(), want), (rel, used[rel][:, 16, 16].tolist())
    rot = used["cat/exif_rotated.jpg"]  # upright: 20 wide, 40 tall, red on top, blue below
    assert close(rot[:, 4, 16].tolist(), RED) and close(rot[:, 28, 16].tolist(), BLUE)
    assert "ignored 2 hidden files" in capsys.readouterr().err
    assert seconds < 20  # the bombs cost milliseconds; the whole zoo a few seconds on a loaded CPU


@pytest.mark.parametrize("name", ["bomb.png", "bomb_under_pillow_limit.png", "too_wide.png"])
def test_decompression_bomb_is_refused_in_milliseconds(tmp_path, name):
    data, reason = zoo()[name]
    (tmp_path / name).write_bytes(data)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=reason):
        load_photo(tmp_path / name)
    assert time.perf_counter() - t0 < 0.5 and len(data) < 200


def test_very_non_square_photos_fit_every_way_without_huge_canvases():
    for size in ((16_000, 3), (3, 16_000), (1, 1)):
        img = Image.new("RGB", size, GREEN)
        for fit in ("crop", "pad", "stretch"):
            t0 = time.perf_counter()
            out = prepare_photo(img, filtered=True, fit=fit)
            assert out.size == (32, 32) and out.mode == "RGB" and time.perf_counter() - t0 < 5, (size, fit)


def test_training_folders_skip_the_same_files_and_say_why(tmp_path, zoo_folder, watchdog, capsys):
    root = write_tree(tmp_path / "tree", n_train=2, n_test=1)
    for name, (data, _) in zoo().items():
        (root / "train" / "cat" / name).write_bytes(data)
    os.symlink(root / "train" / "cat" / "0.png", root / "train" / "cat" / "link.png")
    os.symlink("nowhere.png", root / "train" / "cat" / "broken.png")
    os.mkfifo(root / "train" / "cat" / "pipe.png")
    (root / "train" / "cat" / ".hidden.png").write_bytes(b"junk")
    os.symlink(root / "train" / "dog", root / "train" / "cat" / "dogs")  # a linked folder: followed once
    os.symlink(root / "train", root / "train" / "dog" / "loop")  # a loop back up: not followed again
    d = load_cifar10(root, cache_dir=tmp_path / "cache", progress=False)
    n_used = sum(not isinstance(e, str) for _, e in zoo().values())
    cat = CLASSES.index("cat")
    assert (d.train_y == cat).sum() == 2 + n_used + 1 + 2  # two of its own, the zoo's good ones, the link, dogs/
    err = capsys.readouterr().err
    n_bad = sum(isinstance(e, str) for _, e in zoo().values()) + 2
    assert f"skipped {n_bad} unreadable files" in err and "\n" not in err.split("skipped", 1)[1].rstrip("\n")


def test_class_folder_mistakes_are_reported_clearly(tmp_path, capsys):
    root = tmp_path / "photos"
    for cls in ("cat", "Dogs", "airplanes", "kitten"):
        (root / cls).mkdir(parents=True)
    Image.new("RGB", (32, 32), RED).save(root / "cat" / "a.png")
    with pytest.raises(UserError) as e:
        load_testset(root)
    msg = str(e.value)
    assert "'Dogs' (did you mean 'dog'?)" in msg and "'airplanes' (did you mean 'airplane'?)" in msg
    assert "'kitten'" in msg and "\n" not in msg
    for cls in ("Dogs", "airplanes", "kitten"):
        (root / cls).rmdir()
    (root / "dog").mkdir()  # empty
    ts = load_testset(root)
    assert len(ts.y) == 1 and "no readable images for" in capsys.readouterr().err
    tree = write_tree(tmp_path / "tree", n_train=1, n_test=1)
    (tree / "test" / "truck").rename(tree / "test" / "trucks")
    line = one_line_error(["train", "--preset", "imp1", "--data", tree, "--out", tmp_path / "run"], capsys)
    assert "missing truck" in line and "unexpected trucks" in line and not (tmp_path / "run").exists()
