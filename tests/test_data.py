"""Datasets: the built-in shapes, normalisation, data specs, image folders, Fashion-MNIST idx files."""

from __future__ import annotations

import ast
import gzip
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mindscope.data
from mindscope.data import DATA_KINDS, ImageSet, Normalization, fashion_mnist, load_data, read_image, shapes10


# --- the built-in dataset --------------------------------------------------------------------
def test_builtin_is_deterministic_from_its_seed():
    a = load_data("builtin", seed=5, train_limit=40, test_limit=20)
    b = load_data("builtin", seed=5, train_limit=40, test_limit=20)
    c = load_data("builtin", seed=6, train_limit=40, test_limit=20)
    for x, y in ((a.train, b.train), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
        assert torch.equal(x.masks, y.masks)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:20], a.test.images)  # train and test are different draws


def test_builtin_prefix_property():
    # 270 crosses the generator's 256-image chunk boundary.
    small, large = shapes10.generate(270, seed=1), shapes10.generate(300, seed=1)
    for s, big in zip(small, large):
        np.testing.assert_array_equal(s, big[:270])
    data = load_data("builtin", seed=1, train_limit=20, test_limit=7)
    np.testing.assert_array_equal(data.train.images.numpy(), large[0][:20])
    np.testing.assert_array_equal(data.test.images.numpy(), shapes10.generate(7, seed=1, split=1)[0])


@pytest.fixture(scope="module")
def builtin():
    return load_data("builtin", seed=0, train_limit=200, test_limit=10)


def test_builtin_types_and_classes(builtin):
    train = builtin.train
    assert train.images.dtype == torch.uint8 and train.images.shape == (200, 3, 32, 32)
    assert train.labels.dtype == torch.int64 and train.labels.shape == (200,)
    assert train.masks.dtype == torch.bool and train.masks.shape == (200, 32, 32)
    assert len(builtin.classes) == 10 == len(set(builtin.classes))
    counts = torch.bincount(train.labels, minlength=10)
    assert counts.min() >= 15  # every class, roughly balanced
    assert builtin.name == "shapes10" and builtin.description
    assert builtin.image_shape == (3, 32, 32)


def _luminance(images: np.ndarray) -> np.ndarray:
    return np.tensordot(images.astype(np.float64) / 255, [0.299, 0.587, 0.114], axes=([1], [0]))  # (N, H, W)


def test_masks_lie_on_the_object(builtin):
    images, masks = builtin.train.images.numpy(), builtin.train.masks.numpy()
    area = masks.mean(axis=(1, 2))
    assert area.min() > 0.03 and area.max() < 0.8
    lum = _luminance(images)
    # The ring of pixels just outside the mask: the object's local background.
    grown = masks.copy()
    for axis in (1, 2):
        for shift in (-2, -1, 1, 2):
            grown |= np.roll(masks, shift, axis=axis)
    ring = grown & ~masks

    def contrast(inside, outside):
        return np.array([abs(v[i].mean() - v[o].mean()) for v, i, o in zip(lum, inside, outside)])

    on_object = contrast(masks, ring)
    # Control: the same mask moved off the object shows far less contrast with its ring.
    moved = np.roll(masks, (11, 13), axis=(1, 2))
    moved_ring = np.roll(ring, (11, 13), axis=(1, 2))
    off_object = contrast(moved, moved_ring)
    assert np.median(on_object) > 0.25
    assert np.mean(on_object > 0.1) > 0.95
    assert np.median(on_object) > 3 * np.median(off_object)


def test_builtin_needs_no_files_and_limits(builtin):
    assert len(builtin.train) == 200 and len(builtin.test) == 10
    with pytest.raises(ValueError, match="train_limit must be >= 1, got 0"):
        load_data("builtin", train_limit=0)


# --- normalisation ---------------------------------------------------------------------------
def test_normalization_round_trip_and_reference():
    norm = Normalization((0.2, 0.5, 0.7), (0.1, 0.25, 0.3))
    pixels = torch.rand(4, 3, 5, 6, dtype=torch.float64)
    x = norm.apply(pixels)
    reference = (pixels.numpy() - np.array([0.2, 0.5, 0.7])[:, None, None]) / np.array([0.1, 0.25, 0.3])[:, None, None]
    np.testing.assert_allclose(x.numpy(), reference, rtol=1e-12)
    assert x.dtype == torch.float64
    torch.testing.assert_close(norm.invert(x), pixels)


def test_normalization_fit_and_inputs():
    images = torch.randint(0, 256, (20, 3, 4, 4), dtype=torch.uint8)
    norm = Normalization.fit(images)
    p = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(norm.mean, p.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(norm.std, p.std(axis=(0, 2, 3), ddof=1), rtol=1e-12)
    data = load_data("builtin", train_limit=8, test_limit=8)
    x = data.inputs(data.test, [1, 3])
    assert x.dtype == torch.float32 and x.shape == (2, 3, 32, 32)
    mean, std = np.array(data.normalization.mean), np.array(data.normalization.std)
    expected = (data.test.images.numpy()[[1, 3]] / 255 - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_imageset_checks():
    with pytest.raises(ValueError, match="images must be uint8"):
        ImageSet(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64), ("a",))
    with pytest.raises(ValueError, match=r"labels must lie in 0..1, got 0..2"):
        ImageSet(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), ("a", "b"))


# --- data specs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, error, message",
    [
        (
            "mnist:/tmp/x",
            ValueError,
            r"unknown data kind 'mnist' in 'mnist:/tmp/x'; use one of: builtin, "
            r"cifar10:PATH, fashion-mnist:PATH, folder:PATH",
        ),
        ("builtin:/tmp", ValueError, r"'builtin' takes no path"),
        ("folder", ValueError, r"folder needs a path: 'folder:PATH'"),
        (
            "folder:{tmp}/absent",
            FileNotFoundError,
            r"no such file or folder '.*absent' for 'folder:.*'; check the path",
        ),
        ("cifar10:{tmp}/absent.tar.gz", FileNotFoundError, r"no such file or folder .* or pass --download"),
        ("fashion-mnist:{tmp}/nope", FileNotFoundError, r"no such file or folder"),
    ],
)
def test_load_data_errors(tmp_path, spec, error, message):
    with pytest.raises(error, match=message):
        load_data(spec.format(tmp=tmp_path))
    assert set(DATA_KINDS) == {"builtin", "cifar10", "fashion-mnist", "folder"}


# --- image folders ---------------------------------------------------------------------------
def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _pictures(rng, classes, per_class, folder: Path):
    written = []
    for label, name in enumerate(classes):
        for i in range(per_class):
            array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            _write_png(folder / name / f"{i}.png", array)
            written.append((array.transpose(2, 0, 1), label))
    return written


def _as_set(imageset: ImageSet):
    return sorted((img.numpy().tobytes(), int(y)) for img, y in zip(imageset.images, imageset.labels))


def test_image_folder_with_train_and_test(tmp_path):
    rng = np.random.default_rng(0)
    classes = ("cat", "dog")
    train = _pictures(rng, classes, 3, tmp_path / "train")
    test = _pictures(rng, classes, 2, tmp_path / "test")
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    data = load_data(f"folder:{tmp_path}")
    assert data.classes == classes
    assert data.train.images.shape == (6, 3, 32, 32) and data.train.images.dtype == torch.uint8
    assert _as_set(data.train) == sorted((a.tobytes(), y) for a, y in train)
    assert _as_set(data.test) == sorted((a.tobytes(), y) for a, y in test)


def test_image_folder_split_80_20_and_conversions(tmp_path):
    rng = np.random.default_rng(1)
    written = _pictures(rng, ("a", "b", "c"), 3, tmp_path)
    grey = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    _write_png(tmp_path / "b" / "grey.png", grey)
    written.append((np.stack([grey] * 3), 1))
    _write_png(tmp_path / "c" / "big.png", rng.integers(0, 256, (48, 40, 3), dtype=np.uint8))
    data = load_data(f"folder:{tmp_path}", seed=3)
    assert len(data.train) == 9 and len(data.test) == 2  # round(0.8 * 11) = 9
    everything = _as_set(data.train) + _as_set(data.test)
    for item in sorted((a.tobytes(), y) for a, y in written):
        assert item in everything
    assert sorted(y for _, y in everything) == [0] * 3 + [1] * 4 + [2] * 4
    assert data.test.images.shape[1:] == (3, 32, 32)  # the 48x40 image is resized
    # The split depends on the seed only.
    again = load_data(f"folder:{tmp_path}", seed=3)
    assert torch.equal(again.test.images, data.test.images)


def test_image_folder_without_classes(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders in"):
        _ = load_data(f"folder:{tmp_path}").train


# --- Fashion-MNIST idx files -----------------------------------------------------------------
def _idx(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, type 0x08 (ubyte), ndim, then each dimension as big-endian int32."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fashion(folder: Path, *, compress: bool, n_train: int = 12, n_test: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        raw = _idx(array)
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(raw))
        else:
            (folder / name).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist(tmp_path, compress):
    arrays = write_fashion(tmp_path, compress=compress)
    data = load_data(f"fashion-mnist:{tmp_path}", test_limit=4)
    assert data.classes[0] == "T-shirt/top" and data.classes[9] == "Ankle boot" and len(data.classes) == 10
    assert data.train.images.shape == (12, 1, 28, 28) and data.train.images.dtype == torch.uint8
    np.testing.assert_array_equal(data.train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(data.train.labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(data.test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"][:4])
    assert data.train.labels.dtype == torch.int64
    assert data.image_shape == (1, 28, 28)


@pytest.mark.parametrize(
    "compress, keep, message",
    [
        (False, -100, r"holds 9308 values, its header says \(12, 28, 28\): truncated"),
        (False, -1, r"holds 9407 values, its header says \(12, 28, 28\): truncated"),
        (True, -100, r"truncated or corrupt"),
        (False, 10, r"header is cut short"),
    ],
)
def test_fashion_mnist_truncated(tmp_path, compress, keep, message):
    """`keep` bytes of the training images file: from the start if positive, all but -keep if negative."""
    write_fashion(tmp_path, compress=compress)
    path = tmp_path / ("train-images-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(ValueError, match=message):
        _ = load_data(f"fashion-mnist:{tmp_path}").train


def test_fashion_mnist_bad_files(tmp_path):
    write_fashion(tmp_path, compress=False)
    labels = tmp_path / "t10k-labels-idx1-ubyte"
    labels.write_bytes(_idx(np.array([0, 1, 10, 2, 3], np.uint8)))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9, got 0..10"):
        _ = load_data(f"fashion-mnist:{tmp_path}").train
    labels.write_bytes(_idx(np.array([0, 1], np.uint8)))
    with pytest.raises(ValueError, match=r"expected 5 integer labels"):
        _ = load_data(f"fashion-mnist:{tmp_path}").train
    labels.unlink()
    with pytest.raises(ValueError, match=r"lacks t10k-labels-idx1-ubyte\[.gz\]"):
        load_data(f"fashion-mnist:{tmp_path}")
    with pytest.raises(ValueError, match="not a folder"):
        fashion_mnist.check_fashion_mnist(tmp_path / "train-images-idx3-ubyte")


def _gzip_of_zeros(path: Path, header: bytes, zeros: int) -> None:
    """A gzipped idx file: `header`, then `zeros` zero bytes, compressed as they are produced."""
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header)
        for start in range(0, zeros, 1 << 20):
            f.write(bytes(min(1 << 20, zeros - start)))


def test_fashion_mnist_gzip_bomb_stops_at_the_declared_size(tmp_path):
    write_fashion(tmp_path, compress=True)
    bomb = tmp_path / "train-images-idx3-ubyte.gz"
    _gzip_of_zeros(bomb, bytes([0, 0, 8, 3]) + struct.pack(">3i", 12, 28, 28), 100_000_000)
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"holds more than 9408 values, its header says \(12, 28, 28\)"):
            _ = load_data(f"fashion-mnist:{tmp_path}").train
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # bytes: the 100 MB behind the header were never unpacked


@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_header_larger_than_the_file(tmp_path, compress):
    write_fashion(tmp_path, compress=compress)
    name = "train-images-idx3-ubyte" + (".gz" if compress else "")
    header = bytes([0, 0, 8, 3]) + struct.pack(">3i", 60000, 28, 28)  # 47 MB declared, 784 bytes there
    raw = header + bytes(784)
    (tmp_path / name).write_bytes(gzip.compress(raw) if compress else raw)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"holds 784 values, its header says \(60000, 28, 28\): truncated"):
            _ = load_data(f"fashion-mnist:{tmp_path}").train
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20e6  # bytes: nothing allocated from the header


def test_fashion_mnist_header_over_the_limit(tmp_path):
    write_fashion(tmp_path, compress=True)
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)  # 2^96 bytes
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(header))
    with pytest.raises(ValueError, match=r"header declares \(4294967295, 4294967295, 4294967295\), .* more than the "):
        _ = load_data(f"fashion-mnist:{tmp_path}").train


def test_fashion_mnist_train_and_test_of_different_sizes(tmp_path):
    write_fashion(tmp_path, compress=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(np.zeros((5, 32, 32), np.uint8)))
    with pytest.raises(ValueError, match=r"training images are 28x28 but test images 32x32"):
        _ = load_data(f"fashion-mnist:{tmp_path}").train


# --- image files that are too large, truncated or broken ---------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares width x height (1-bit grey) and whose data is empty: tiny on disk."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _two_classes(root: Path, per_class: int = 2) -> None:
    _pictures(np.random.default_rng(2), ("a", "b"), per_class, root)


@pytest.mark.parametrize(
    "width, height, message",
    [
        (20000, 20000, r"too large \(Pillow refused it as a possible decompression bomb\)"),
        (9000, 9000, r"too large \(9000x9000 pixels\)"),
    ],
)
def test_image_too_large_names_the_file_and_the_limit(tmp_path, width, height, message):
    _two_classes(tmp_path)
    (tmp_path / "b" / "huge.png").write_bytes(_png_header(width, height))
    with pytest.raises(
        ValueError, match=r"b/huge.png is " + message + r"; an image may have at most 67,108,864 pixels"
    ):
        _ = load_data(f"folder:{tmp_path}").train


def test_truncated_and_broken_images(tmp_path):
    _two_classes(tmp_path)
    good = (tmp_path / "a" / "0.png").read_bytes()
    (tmp_path / "a" / "cut.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"a/cut.png is truncated or corrupt \(image file is truncated"):
        _ = load_data(f"folder:{tmp_path}").train
    (tmp_path / "a" / "cut.png").unlink()
    for where, message in ((35, r"broken PNG file"), (11, r"Truncated IHDR chunk")):
        broken = bytearray(good)
        broken[where] = 0  # 35: the IDAT length (a SyntaxError in Pillow); 11: the IHDR length (a ValueError)
        (tmp_path / "a" / "broken.png").write_bytes(bytes(broken))
        with pytest.raises(ValueError, match=r"a/broken.png is truncated or corrupt \(" + message):
            _ = load_data(f"folder:{tmp_path}").train


def test_read_image_of_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"cannot read .*absent.png \(No such file or directory\); check the path"):
        read_image(tmp_path / "absent.png")


# --- image folder layouts that would train the wrong thing ---------------------------------------------
def test_image_folder_with_one_class(tmp_path):
    _pictures(np.random.default_rng(3), ("cat",), 3, tmp_path)
    with pytest.raises(ValueError, match=r"holds one class folder \(cat\); a classifier needs at least 2 classes"):
        load_data(f"folder:{tmp_path}")


def test_image_folder_test_classes_missing_from_train(tmp_path):
    rng = np.random.default_rng(4)
    _pictures(rng, ("cat", "dog"), 2, tmp_path / "train")
    _pictures(rng, ("bird", "cat", "dog", "emu"), 1, tmp_path / "test")
    with pytest.raises(ValueError, match=r"test has class folders that .*train lacks: bird, emu; the classes come"):
        load_data(f"folder:{tmp_path}")


def test_image_folder_with_train_but_no_test(tmp_path):
    _pictures(np.random.default_rng(5), ("cat", "dog"), 2, tmp_path / "train")
    with pytest.raises(ValueError, match=r"has train/ but no test/; give both, or put the class folders in"):
        load_data(f"folder:{tmp_path}")


def test_image_folder_given_a_file(tmp_path):
    _two_classes(tmp_path)
    with pytest.raises(ValueError, match=r"0.png is a file, not a folder; folder:PATH wants PATH/CLASS_NAME/\*.png"):
        load_data(f"folder:{tmp_path / 'a' / '0.png'}")


def test_image_folder_ignores_hidden_folders(tmp_path):
    _two_classes(tmp_path)
    _pictures(np.random.default_rng(6), (".ipynb_checkpoints",), 1, tmp_path)
    data = load_data(f"folder:{tmp_path}")
    assert data.classes == ("a", "b") and len(data.train) + len(data.test) == 4


# --- the package ---------------------------------------------------------------------------------------
def test_public_names():
    import mindscope.data as data

    assert data.__all__ == sorted(data.__all__)
    assert set(data.__all__) >= {"DataSplits", "ImageSet", "Normalization", "load_data", "parse_spec", "read_image"}
    for name in data.__all__:
        assert getattr(data, name) is not None
    assert data.parse_spec("folder:~/x") == ("folder", Path("~/x").expanduser())


def test_data_imports_only_itself_and_libraries():
    """The data layer knows no looks, runs, training, figures, reports or CLI."""
    package = Path(mindscope.data.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.split(".")[0] == "mindscope":
                    assert name.startswith("mindscope.data"), f"{path.name} imports {name}"
        assert len(path.read_text().splitlines()) < 400, f"{path.name} has grown past 400 lines"


def test_shapes10_images_are_unchanged():
    """Pinned from the generator as it was first published: other work depends on these pixels.

    Labels are exact; the pixel and mask sums allow a few one-unit roundings that a
    different libm could flip, but no real change.
    """
    images, labels, masks = shapes10.generate(300, seed=0)
    assert labels[:20].tolist() == [9, 1, 5, 4, 2, 8, 9, 8, 3, 1, 0, 6, 2, 4, 5, 3, 6, 5, 8, 6]
    assert abs(int(images.astype(np.int64).sum()) - 115621236) <= 50
    assert abs(int(masks.sum()) - 72239) <= 10
    assert images[0, :, 0, :4].tolist() == [[160, 159, 146, 128], [96, 97, 113, 126], [155, 158, 137, 131]]
    images, labels, masks = shapes10.generate(300, seed=3, split=1)
    assert labels[:20].tolist() == [7, 5, 2, 0, 6, 9, 5, 6, 0, 4, 5, 5, 2, 4, 5, 7, 9, 9, 4, 9]
    assert abs(int(images.astype(np.int64).sum()) - 117597833) <= 50
    assert abs(int(masks.sum()) - 71353) <= 10
