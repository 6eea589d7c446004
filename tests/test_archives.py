"""CIFAR-10 archives written by the tests in the official layout; the safe unpickler; download."""

from __future__ import annotations

import _codecs as codecs
import hashlib
import http.server
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
import tracemalloc
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from mindscope.cli import main
from mindscope.data import cifar10, load_data, safe_pickle

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
PER_BATCH, N_TEST = 3, 5


# --- writing archives exactly as the official ones are laid out ----------------------------------
def _py2_pickle(obj) -> bytes:
    """Pickle protocol 2 as Python 2's cPickle wrote the originals: str (here bytes) as BINSTRING,
    arrays via numpy.core.multiarray._reconstruct. An independent writer of the real format."""
    out = bytearray(b"\x80\x02")

    def string(b: bytes) -> None:
        out.extend(b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b)

    def integer(v: int) -> None:
        out.extend(b"J" + struct.pack("<i", v))

    def emit(o) -> None:
        if isinstance(o, bytes):
            string(o)
        elif isinstance(o, int):
            integer(o)
        elif isinstance(o, list):
            out.extend(b"](")
            for x in o:
                emit(x)
            out.extend(b"e")
        elif isinstance(o, dict):
            out.extend(b"}(")
            for k, v in o.items():
                emit(k)
                emit(v)
            out.extend(b"u")
        elif isinstance(o, np.ndarray):
            assert o.dtype == np.uint8
            out.extend(b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85")
            string(b"b")
            out.extend(b"\x87R(")
            integer(1)
            out.extend(b"(")
            for d in o.shape:
                integer(d)
            out.extend(b"tcnumpy\ndtype\n")
            string(b"u1")
            out.extend(b"K\x00K\x01\x87R(")
            integer(3)
            string(b"|")
            out.extend(b"NNN")
            integer(-1)
            integer(-1)
            integer(0)
            out.extend(b"tb\x89")
            string(o.tobytes())
            out.extend(b"tb")
        else:
            raise TypeError(type(o))

    emit(obj)
    out.extend(b".")
    return bytes(out)


def _batch(rng: np.random.Generator, n: int, label: str) -> dict:
    return {
        b"batch_label": label.encode(),
        b"labels": [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(n)],
    }


def official_files(seed: int = 0, *, py2: bool = False) -> dict[str, bytes]:
    """The seven files of cifar-10-batches-py/, small, pickled with protocol 2 and bytes keys."""
    rng = np.random.default_rng(seed)
    dump = _py2_pickle if py2 else (lambda o: pickle.dumps(o, protocol=2))
    files = {f"data_batch_{i}": dump(_batch(rng, PER_BATCH, f"training batch {i} of 5")) for i in range(1, 6)}
    files["test_batch"] = dump(_batch(rng, N_TEST, "testing batch 1 of 1"))
    files["batches.meta"] = dump(
        {b"num_cases_per_batch": PER_BATCH, b"num_vis": 3072, b"label_names": [c.encode() for c in CLASSES]}
    )
    files["readme.html"] = b"<meta HTTP-EQUIV='REFRESH' content='0; url=http://www.cs.toronto.edu/~kriz/'>"
    return files


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / cifar10.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def archive_bytes(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo(cifar10.CIFAR10_FOLDER)
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{cifar10.CIFAR10_FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / cifar10.CIFAR10_ARCHIVE
    path.write_bytes(archive_bytes(files))
    return path


def expected(files: dict[str, bytes]):
    """Reference images by the documented layout: value [c, h, w] sits at c*1024 + h*32 + w."""

    def one(name):
        batch = pickle.loads(files[name], encoding="bytes")
        data = batch[b"data"]
        n, c, h, w = np.indices((len(data), 3, 32, 32))
        return data[n, c * 1024 + h * 32 + w], np.asarray(batch[b"labels"], np.int64)

    parts = [one(f"data_batch_{i}") for i in range(1, 6)]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])), one("test_batch")


# --- reading --------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["archive", "folder", "parent", "parent_of_archive"])
def test_reads_official_layout(tmp_path, where):
    files = official_files(1)
    if where == "archive":
        path = write_archive(tmp_path, files)
    elif where == "folder":
        path = write_folder(tmp_path, files)
    elif where == "parent":
        write_folder(tmp_path, files)
        path = tmp_path
    else:
        write_archive(tmp_path, files)
        path = tmp_path
    (xtr, ytr), (xte, yte), names = cifar10.read_cifar10(path)
    (rxtr, rytr), (rxte, ryte) = expected(files)
    assert xtr.shape == (5 * PER_BATCH, 3, 32, 32) and xtr.dtype == np.uint8
    np.testing.assert_array_equal(xtr, rxtr)
    np.testing.assert_array_equal(ytr, rytr)
    np.testing.assert_array_equal(xte, rxte)
    np.testing.assert_array_equal(yte, ryte)
    assert names == CLASSES


def test_reads_python2_pickles(tmp_path):
    files = official_files(2, py2=True)
    # The writer is faithful: a plain unpickler reads it to the same arrays.
    assert pickle.loads(files["test_batch"], encoding="bytes")[b"data"].shape == (N_TEST, 3072)
    (xtr, ytr), (xte, yte), names = cifar10.read_cifar10(write_archive(tmp_path, files))
    (rxtr, rytr), (rxte, ryte) = expected(files)
    np.testing.assert_array_equal(xtr, rxtr)
    np.testing.assert_array_equal(yte, ryte)
    assert names == CLASSES


def test_load_data_cifar10(tmp_path):
    files = official_files(3)
    data = load_data(f"cifar10:{write_archive(tmp_path, files)}", test_limit=2)
    (rxtr, rytr), (rxte, ryte) = expected(files)
    assert data.classes == CLASSES
    torch.testing.assert_close(data.train.images, torch.from_numpy(rxtr), rtol=0, atol=0)
    torch.testing.assert_close(data.train.labels, torch.from_numpy(rytr), rtol=0, atol=0)
    torch.testing.assert_close(data.test.images, torch.from_numpy(rxte[:2]), rtol=0, atol=0)
    assert data.train.labels.dtype == torch.int64


# --- pickles that would run code --------------------------------------------------------------------
class _Command:
    def __init__(self, command: str, *, via=os.system) -> None:
        self.command, self.via = command, via

    def __reduce__(self):
        return (self.via, (self.command,))


def _evil_batches(marker: Path):
    command = f"touch {marker}"
    rng = np.random.default_rng(0)
    top = _batch(rng, PER_BATCH, "training batch 3 of 5")
    top[b"data"] = _Command(command)
    nested = _batch(rng, PER_BATCH, "training batch 3 of 5")
    nested[b"labels"][1] = _Command(command)
    code = _batch(rng, PER_BATCH, "training batch 3 of 5")
    code[b"data"] = _Command(f"__import__('os').system({command!r})", via=eval)
    return {"os.system": (top, "posix.system"), "nested": (nested, "posix.system"), "eval": (code, "__builtin__.eval")}


@pytest.mark.parametrize("case", ["os.system", "nested", "eval"])
def test_crafted_pickle_is_refused_and_never_run(tmp_path, case):
    marker = tmp_path / "MARKER"
    batch, named = _evil_batches(marker)[case]
    evil = pickle.dumps(batch, protocol=2)
    # The control: a plain unpickler really would run the command.
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(_evil_batches(control)[case][0], protocol=2), encoding="bytes")
    assert control.exists()

    files = official_files(4)
    files["data_batch_3"] = evil
    path = write_archive(tmp_path / "a", files)
    with pytest.raises(ValueError, match=rf"refused to unpickle data_batch_3: it names {named}.*nothing in it was run"):
        cifar10.read_cifar10(path)
    with pytest.raises(ValueError, match="refused to unpickle"):
        cifar10.read_cifar10(write_folder(tmp_path / "f", files))
    assert not marker.exists()


def test_crafted_meta_refused_through_cli(tmp_path, capsys):
    marker = tmp_path / "MARKER"
    files = official_files(5)
    files["batches.meta"] = pickle.dumps({b"label_names": _Command(f"touch {marker}")}, protocol=2)
    out = tmp_path / "run"
    status = main(
        [
            "train",
            "--data",
            f"cifar10:{write_archive(tmp_path, files)}",
            "--epochs",
            "1",
            "--width",
            "4",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("mindscope: error: refused to unpickle batches.meta") and err.count("\n") == 1
    assert not marker.exists() and not out.exists()


# --- damaged and wrong archives ----------------------------------------------------------------------
def test_truncated_archive(tmp_path):
    whole = archive_bytes(official_files(6))
    path = tmp_path / cifar10.CIFAR10_ARCHIVE
    path.write_bytes(whole[: len(whole) * 2 // 3])
    with pytest.raises(ValueError, match=r"truncated or corrupt: download it again"):
        cifar10.read_cifar10(path)


def test_corrupt_archive(tmp_path):
    whole = bytearray(archive_bytes(official_files(6)))
    middle = len(whole) // 2
    whole[middle : middle + 64] = bytes(64)
    path = tmp_path / cifar10.CIFAR10_ARCHIVE
    path.write_bytes(bytes(whole))
    with pytest.raises(ValueError, match=r"truncated or corrupt"):
        cifar10.read_cifar10(path)


def test_truncated_pickle_in_folder(tmp_path):
    files = official_files(7)
    files["test_batch"] = files["test_batch"][:-500]
    with pytest.raises(ValueError, match=r"test_batch is truncated or corrupt .*download the archive again"):
        cifar10.read_cifar10(write_folder(tmp_path, files))


def test_not_a_tar_and_missing_members(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=r"is not a tar archive; give cifar-10-python.tar.gz"):
        cifar10.check_cifar10(text)
    files = official_files(8)
    del files["test_batch"]
    with pytest.raises(ValueError, match=r"not the CIFAR-10 python archive: it lacks test_batch"):
        cifar10.read_cifar10(write_archive(tmp_path / "a", files))
    with pytest.raises(ValueError, match=r"not an extracted CIFAR-10 folder: it lacks test_batch"):
        cifar10.check_cifar10(write_folder(tmp_path / "f", files))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        cifar10.check_cifar10(tmp_path / "absent.tar.gz")


def _with(batch: dict, **changes) -> dict:
    out = dict(batch)
    out.update({k.encode(): v for k, v in changes.items()})
    return out


_BAD_BATCHES = {
    "int32 data": (
        dict(data=np.zeros((PER_BATCH, 3072), np.int32)),
        r"expected uint8 images of shape \(N, 3072\), got int32",
    ),
    "float data": (dict(data=np.zeros((PER_BATCH, 3072), np.float64)), r"expected uint8 images .* got float64"),
    "list data": (dict(data=[[0] * 3072] * PER_BATCH), r"expected uint8 images .* got list"),
    "short rows": (dict(data=np.zeros((PER_BATCH, 3000), np.uint8)), r"shape \(N, 3072\), got uint8 \(3, 3000\)"),
    "3-d data": (dict(data=np.zeros((PER_BATCH, 3, 1024), np.uint8)), r"got uint8 \(3, 3, 1024\)"),
    "label 10": (dict(labels=[0, 10, 1]), r"labels must lie in 0..9, got 0..10"),
    "label -1": (dict(labels=[0, -1, 1]), r"labels must lie in 0..9, got -1..1"),
    "too few labels": (dict(labels=[0, 1]), r"expected 3 integer labels, got a list of 2"),
    "too few labels as an array": (
        dict(labels=np.array([0, 1])),
        r"expected 3 integer labels, got int64 of shape \(2,\)",
    ),
    "nested labels": (dict(labels=[[0, 1]] * 3), r"expected 3 integer labels, got a list holding list"),
    "float labels": (dict(labels=[0.0, 1.5, 2.0]), r"expected 3 integer labels, got float64"),
}


@pytest.mark.parametrize("case", list(_BAD_BATCHES))
def test_wrong_dtype_shape_or_labels(tmp_path, case):
    changes, message = _BAD_BATCHES[case]
    files = official_files(9)
    files["data_batch_2"] = pickle.dumps(
        _with(pickle.loads(files["data_batch_2"], encoding="bytes"), **changes), protocol=2
    )
    with pytest.raises(ValueError, match=r"^data_batch_2: .*" + message):
        cifar10.read_cifar10(write_archive(tmp_path, files))


@pytest.mark.parametrize(
    "meta, message",
    [
        ({b"label_names": [c.encode() for c in CLASSES[:9]]}, "batches.meta names 9 classes, CIFAR-10 has 10"),
        ({b"num_vis": 3072}, "batches.meta lacks the key 'label_names'"),
        ([b"airplane"] * 10, "batches.meta holds a list, not a dict"),
    ],
)
def test_wrong_meta(tmp_path, meta, message):
    files = official_files(10)
    files["batches.meta"] = pickle.dumps(meta, protocol=2)
    with pytest.raises(ValueError, match=message):
        cifar10.read_cifar10(write_folder(tmp_path, files))


def test_batch_that_is_not_a_dict(tmp_path):
    files = official_files(11)
    files["data_batch_5"] = pickle.dumps([1, 2, 3], protocol=2)
    with pytest.raises(ValueError, match="data_batch_5 holds a list, not a dict"):
        cifar10.read_cifar10(write_folder(tmp_path, files))


# --- download against a loopback server --------------------------------------------------------------
@contextmanager
def serve(routes: dict[str, bytes | tuple[int, bytes]]):
    """Serve `routes` on 127.0.0.1 from a thread; a tuple is (declared length, body) to cut a reply short."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path not in routes:
                self.send_error(404)
                return
            body = routes[self.path]
            length, body = body if isinstance(body, tuple) else (len(body), body)
            self.send_response(200)
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_right_checksum(tmp_path):
    payload = archive_bytes(official_files(12))
    md5 = hashlib.md5(payload).hexdigest()
    dest = tmp_path / "cache"
    with serve({"/c.tar.gz": payload}) as base:
        got = cifar10.download_cifar10(dest, url=f"{base}/c.tar.gz", md5=md5, timeout=10)
        assert got == dest / cifar10.CIFAR10_ARCHIVE and got.read_bytes() == payload
        assert sorted(p.name for p in dest.iterdir()) == [cifar10.CIFAR10_ARCHIVE]
        # A good copy is not fetched again: the server no longer has it.
        assert cifar10.download_cifar10(dest, url=f"{base}/gone", md5=md5, timeout=10) == got
    assert cifar10.read_cifar10(got)[2] == CLASSES


@pytest.mark.parametrize("route", ["wrong-checksum", "cut-short", "missing"])
def test_download_refused_leaves_nothing(tmp_path, route):
    payload = archive_bytes(official_files(13))
    md5 = "0" * 32 if route == "wrong-checksum" else hashlib.md5(payload).hexdigest()
    routes = {"/wrong-checksum": payload, "/cut-short": (len(payload), payload[: len(payload) // 2])}
    message = (
        "could not download"
        if route == "missing"
        else r"refused the download .* its MD5 is [0-9a-f]{32}, expected [0-9a-f]{32}; the file was removed"
    )
    dest = tmp_path / "cache"
    with serve(routes) as base:
        with pytest.raises(ValueError, match=message):
            cifar10.download_cifar10(dest, url=f"{base}/{route}", md5=md5, timeout=10)
    assert list(dest.iterdir()) == []


def test_download_to_archive_path(tmp_path):
    payload = b"tiny"
    with serve({"/x": payload}) as base:
        got = cifar10.download_cifar10(
            tmp_path / "d" / "mine.tar.gz", url=f"{base}/x", md5=hashlib.md5(payload).hexdigest(), timeout=10
        )
    assert got == tmp_path / "d" / "mine.tar.gz" and got.read_bytes() == payload


# --- the safe unpickler against pickle itself ----------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4])
def test_safe_unpickler_matches_pickle_for_numeric_arrays(protocol):
    rng = np.random.default_rng(14)
    arrays = [
        rng.integers(0, 256, (4, 3072), dtype=np.uint8),
        rng.integers(-(2**40), 2**40, 7).astype(">i8"),  # big-endian
        np.asfortranarray(rng.normal(size=(3, 5))),
        rng.normal(size=(2, 3)).astype(np.float16),
        rng.random(6) < 0.5,
        np.zeros((0, 3072), np.uint8),
        np.array(7, np.int32),  # 0-d
    ]
    data = pickle.dumps({b"arrays": arrays, b"shared": (arrays[0], arrays[0])}, protocol=protocol)
    reference = pickle.loads(data, encoding="bytes")
    got = cifar10.safe_unpickle(data, "test")
    for a, b in zip(reference[b"arrays"], got[b"arrays"]):
        assert type(b) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape and a.strides == b.strides
        np.testing.assert_array_equal(a, b)
        assert b.flags.writeable
    assert got[b"shared"][0] is got[b"shared"][1]  # one array, referenced twice


# --- sizes and types the format never has ----------------------------------------------------------------
class _Reduce:
    """Pickles as `func(*args)`, with `state` for BUILD: a hand-made pickle in a few lines."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct_with(state: tuple) -> _Reduce:
    return _Reduce(np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state)


@pytest.mark.parametrize(
    "dtype_state",
    [
        ("|", None, None, -1, -1),  # numpy before 1.0: no version number
        (1, "|", None, None, -1, -1),  # no names
        (2, "|", None, None, None, -1, -1),
        (3, "|", None, None, None, -1, -1, 0),  # what the official batches hold
        (4, "|", None, None, None, -1, -1, 0, None),  # numpy 1.7 on, with metadata
    ],
    ids=["v0", "v1", "v2", "v3", "v4"],
)
def test_every_numpy_dtype_state_is_read(dtype_state):
    expected = np.arange(6, dtype=np.uint8).reshape(2, 3)
    dtype = _Reduce(np.dtype, ("u1", 0, 1), dtype_state)
    array = _reconstruct_with((1, (2, 3), dtype, False, expected.tobytes()))
    got = cifar10.safe_unpickle(pickle.dumps({b"data": array}, protocol=2), "test")[b"data"]
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "data, message",
    [
        # numpy.ndarray((150000, 3072), u1): 460 MB of uninitialised memory from a 180-byte file
        (_Reduce(np.ndarray, ((150000, 3072), np.dtype("u1"))), r"uint8 array of shape \(150000, 3072\), 460,800,000"),
        # numpy's own pickle form, declaring the same shape with no data behind it
        (_reconstruct_with((1, (150000, 3072), np.dtype("u1"), False, b"")), r"shape \(150000, 3072\), 460,800,000"),
        # a sub-array dtype of 10^9 bytes per element
        (
            _Reduce(np.ndarray, ((1,), np.dtype(("u1", (1000, 1000, 1000))))),
            r"it declares an array of dtype \|V1000000000",
        ),
    ],
    ids=["ndarray call", "reconstruct state", "sub-array dtype"],
)
def test_declared_arrays_larger_than_a_batch_are_refused_before_allocating(tmp_path, data, message):
    files = official_files(15)
    files["data_batch_1"] = pickle.dumps({b"data": data, b"labels": [0]}, protocol=2)
    assert len(files["data_batch_1"]) < 400
    path = write_folder(tmp_path, files)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"^refused to unpickle data_batch_1: .*" + message) as caught:
            cifar10.read_cifar10(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "nothing in it was run or allocated. Use the official archive" in str(caught.value)
    assert peak < 20e6  # bytes: the official files here are tiny; nothing was allocated from the declared shape


_SHORT_OBJECT_ARRAY = """
import importlib.util, pickle, sys, numpy as np
spec = importlib.util.spec_from_file_location("safe_pickle", sys.argv[1])  # alone: no torch to import
safe_pickle = importlib.util.module_from_spec(spec)
spec.loader.exec_module(safe_pickle)
state = (1, (100_000_000,), np.dtype(object), False, [1, 2])
class Evil:
    def __reduce__(self):
        return (np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state)
try:
    safe_pickle.load(pickle.dumps({b"data": Evil()}, protocol=2), max_array_bytes=10**6, max_total_bytes=10**6)
except safe_pickle.Refused as exc:
    print(exc)
"""


def test_object_arrays_are_refused_without_reaching_numpy():
    """numpy 2.4's ndarray.__setstate__ trusts an object array's shape: a short list segfaults it."""
    done = subprocess.run(
        [sys.executable, "-c", _SHORT_OBJECT_ARRAY, safe_pickle.__file__], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("it declares an array of dtype object")


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((PER_BATCH, 3072), object), r"it declares an array of dtype object"),
        (np.zeros((PER_BATCH, 3), "U4"), r"it declares an array of dtype <U4"),
        (_Reduce(codecs.encode, ("x", "rot13")), r"it encodes a str as 'rot13', not latin1 text"),
    ],
    ids=["object", "unicode", "rot13"],
)
def test_arrays_of_other_than_numbers_are_refused(tmp_path, data, message):
    files = official_files(16)
    files["data_batch_4"] = pickle.dumps({b"data": data, b"labels": [0, 1, 2]}, protocol=2)
    with pytest.raises(ValueError, match=r"^refused to unpickle data_batch_4: " + message):
        cifar10.read_cifar10(write_folder(tmp_path, files))


def test_many_calls_on_one_string_are_capped(tmp_path):
    # One 1 MB string encoded 100 times: 100 MB built from a 1 MB file, unless it is counted.
    text = "x" * 1_000_000
    calls = [_Reduce(codecs.encode, (text, "latin1")) for _ in range(100)]
    files = official_files(17)
    files["test_batch"] = pickle.dumps({b"data": calls}, protocol=2)
    assert len(files["test_batch"]) < 1_100_000  # pickle stores the shared string once
    with pytest.raises(ValueError, match=r"^refused to unpickle test_batch: its arrays and strings come to more than"):
        cifar10.read_cifar10(write_folder(tmp_path, files))


class _Zeros(io.RawIOBase):
    """n zero bytes, produced as they are read."""

    def __init__(self, n: int) -> None:
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        k = min(len(buffer), self.n)
        buffer[:k] = bytes(k)
        self.n -= k
        return k


def _archive_with(path: Path, name: str, size: int) -> Path:
    """A CIFAR-10 archive whose `name` is `size` zero bytes, the other files official (and tiny)."""
    files = official_files(18)
    with tarfile.open(path, mode="w:gz", compresslevel=1) as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(f"{cifar10.CIFAR10_FOLDER}/{member}")
            if member == name:
                info.size = size
                tar.addfile(info, io.BufferedReader(_Zeros(size)))
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_oversized_archive_member_is_refused_before_reading(tmp_path):
    path = _archive_with(tmp_path / cifar10.CIFAR10_ARCHIVE, "data_batch_1", 100_000_000)
    assert path.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"data_batch_1 is 100,000,000 bytes, more than the 67,108,864") as caught:
            cifar10.read_cifar10(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value).endswith("nothing was read. Use the official archive")
    assert peak < 20e6  # bytes


def test_oversized_file_in_folder_is_refused_before_reading(tmp_path):
    folder = write_folder(tmp_path, official_files(19))
    with open(folder / "batches.meta", "r+b") as f:
        f.truncate(2 << 20)  # sparse: 2 MiB on paper, nothing on disk
    with pytest.raises(ValueError, match=r"batches.meta is 2,097,152 bytes, more than the 1,048,576"):
        cifar10.read_cifar10(folder)


def test_archive_that_unpacks_too_far_is_refused(tmp_path, monkeypatch):
    # The real limits (512 MiB, 1000 entries) are lowered here so that the test stays small.
    path = _archive_with(tmp_path / cifar10.CIFAR10_ARCHIVE, "readme.html", 3 << 20)
    monkeypatch.setattr(cifar10, "MAX_ARCHIVE", 2 << 20)
    with pytest.raises(ValueError, match=r"unpacks to more than 2,097,152 bytes; the CIFAR-10 python archive holds"):
        cifar10.read_cifar10(path)
    monkeypatch.setattr(cifar10, "MAX_ARCHIVE", 512 << 20)
    monkeypatch.setattr(cifar10, "MAX_MEMBERS", 5)
    with pytest.raises(ValueError, match=r"unpacks to more than 5 entries"):
        cifar10.read_cifar10(path)
