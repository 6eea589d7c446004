"""Unpickle plain containers and numeric numpy arrays, and nothing else.

A pickle is a program: each REDUCE calls whatever global it names. This unpickler admits
only the globals a pickled numpy array names, and even those never reach numpy as they
are: each is replaced by a stand-in that records what the pickle asks for. After loading,
every recorded array is checked (a numeric dtype, a shape within a byte limit, data of
exactly that size) and only then built with `np.frombuffer`. So a pickle cannot

- run code (any other global is refused before anything in it is called),
- allocate from a declared shape (`numpy.ndarray((150000, 3072), 'u1')` in a 200-byte file),
- reach numpy's own `ndarray.__setstate__`, which trusts a pickled object array's shape
  and reads past the end of a shorter list (a segfault in numpy 2.4),
- multiply memory through references (many calls on one string are counted against a budget).
"""

from __future__ import annotations

import io
import math
import pickle

import numpy as np

# Everything a pickled numpy array (numpy 1.x or 2.x, written by Python 2 or 3) names.
_RECONSTRUCT = frozenset({("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")})
_BYTES = frozenset({("__builtin__", "bytes"), ("builtins", "bytes")})  # bytes(): how b"" is pickled
ALLOWED_GLOBALS = _RECONSTRUCT | _BYTES | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}
_KINDS = "biuf"  # bool, signed and unsigned integers, floats: arrays of plain numbers only
_ENDIANS = {"<", ">", "=", "|"}


class Refused(Exception):
    """The pickle asked for something outside the rules; nothing it named was called."""


def load(data: bytes, *, max_array_bytes: int, max_total_bytes: int) -> object:
    """Unpickle `data` under the rules above.

    Raises `Refused` (with the reason) for anything outside them, and the usual pickle,
    numpy and Python errors for damaged data.
    """
    unpickler = _Unpickler(data, max_array_bytes, max_total_bytes)
    return _resolve(unpickler.load(), {})


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, max_array_bytes: int, max_total_bytes: int) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.max_array_bytes = max_array_bytes
        self.budget = max_total_bytes  # bytes left for arrays and encoded strings together
        self.max_total_bytes = max_total_bytes
        self.ndarray = _NdarrayName(self)

    def find_class(self, module: str, name: str):
        # Called for every GLOBAL/STACK_GLOBAL opcode, before any REDUCE can call it.
        if (module, name) not in ALLOWED_GLOBALS:
            raise Refused(f"it names {module}.{name}")
        if (module, name) in _RECONSTRUCT:
            return self.reconstruct
        if name == "ndarray":
            return self.ndarray
        if name == "dtype":
            return _DtypeStub
        if (module, name) in _BYTES:
            return _empty_bytes
        return self.encode

    def spend(self, nbytes: int) -> None:
        if nbytes > self.budget:
            raise Refused(f"its arrays and strings come to more than {self.max_total_bytes:,} bytes in all")
        self.budget -= nbytes

    def reconstruct(self, subtype: object, shape: object = None, typecode: object = None) -> _ArrayStub:
        """numpy's `_reconstruct(ndarray, (0,), b'b')`: an empty array that BUILD then fills."""
        if subtype is not self.ndarray:
            raise Refused(f"it reconstructs an array of type {type(subtype).__name__}, not numpy.ndarray")
        return _ArrayStub(self)

    def encode(self, text: object, encoding: object = "utf-8", errors: object = "strict") -> bytes:
        """`_codecs.encode(str, 'latin1')`: how Python 3 pickles bytes at protocols 0 to 2."""
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise Refused(f"it encodes a {type(text).__name__} as {encoding!r}, not latin1 text")
        self.spend(len(text))
        return text.encode("latin1")

    def array(self, shape: object, dtype: object, fortran: object, raw: object) -> np.ndarray:
        """Check a declared array, then build it from its data."""
        dt = _as_dtype(dtype)
        if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
            raise ValueError(f"an array's shape must be a tuple of sizes, got {shape!r}")
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > self.max_array_bytes:
            raise Refused(_too_large(dt, shape, nbytes, self.max_array_bytes))
        if isinstance(raw, list):
            raise Refused("it holds an array of Python objects")
        if not isinstance(raw, bytes) or len(raw) != nbytes:
            held = f"{len(raw):,} bytes" if isinstance(raw, bytes) else type(raw).__name__
            raise ValueError(f"a {dt} array of shape {shape} needs {nbytes:,} bytes of data, got {held}")
        self.spend(nbytes)
        # A writable copy in native byte order, as numpy's own unpickling gives.
        flat = np.frombuffer(raw, dt).astype(dt.newbyteorder("="))
        return flat.reshape(shape, order="F" if fortran else "C")


class _NdarrayName:
    """Stands for numpy.ndarray: the type `_reconstruct` names, never called itself."""

    def __init__(self, unpickler: _Unpickler) -> None:
        self.unpickler = unpickler

    def __call__(self, shape: object = None, dtype: object = "f8", *rest: object) -> None:
        # ndarray(shape, dtype) hands back uninitialised memory; a pickled array never does this.
        dt = _as_dtype(dtype)
        if isinstance(shape, int):
            shape = (shape,)
        if isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape):
            nbytes = math.prod(shape) * dt.itemsize
            if nbytes > self.unpickler.max_array_bytes:
                raise Refused(_too_large(dt, shape, nbytes, self.unpickler.max_array_bytes))
        raise Refused("it calls numpy.ndarray directly, for memory that no data fills")


class _DtypeStub:
    """numpy's `dtype('u1', 0, 1)` plus its BUILD state: a plain numeric dtype, or refused."""

    def __init__(self, spec: object, align: object = 0, copy: object = 1) -> None:
        if isinstance(spec, bytes):
            spec = spec.decode("latin1")
        if not isinstance(spec, str):
            raise Refused(f"it declares a dtype from a {type(spec).__name__}")
        dtype = np.dtype(spec)
        if dtype.kind not in _KINDS or dtype.shape != () or dtype.names is not None:
            raise Refused(f"it declares an array of dtype {dtype}, not of plain numbers")
        self.dtype = dtype

    def __setstate__(self, state: object) -> None:
        # (version, endian, subarray, names, fields, elsize, alignment[, flags[, metadata]]);
        # numpy before 1.0 wrote (endian, subarray, fields, elsize, alignment), with a version in front later.
        if not isinstance(state, tuple) or not 5 <= len(state) <= 9:
            raise ValueError(f"a dtype's state must be a tuple of 5 to 9 items, got {state!r:.80}")
        if len(state) == 5:
            state = (0, *state)
        if len(state) == 6:
            state = (*state[:3], None, *state[3:])
        endian = state[1].decode("latin1") if isinstance(state[1], bytes) else state[1]
        if endian not in _ENDIANS or state[2:5] != (None, None, None) or state[5:7] != (-1, -1):
            raise Refused(f"it declares a dtype with fields, a sub-array or a size of its own ({state!r:.80})")
        if endian != "|":
            self.dtype = self.dtype.newbyteorder(endian)


class _ArrayStub:
    """An array as the pickle describes it; built by `_Unpickler.array` when its state arrives."""

    def __init__(self, unpickler: _Unpickler) -> None:
        self.unpickler = unpickler
        self.value: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        # (version, shape, dtype, is_fortran, data), or without the version in old pickles
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise ValueError(f"an array's state must be a tuple of 4 or 5 items, got {type(state).__name__}")
        if self.value is not None:
            raise ValueError("an array's state was given twice")
        self.value = self.unpickler.array(*state[-4:])


def _empty_bytes() -> bytes:
    return b""


def _too_large(dtype: np.dtype, shape: tuple[int, ...], nbytes: int, limit: int) -> str:
    return f"it declares a {dtype} array of shape {shape}, {nbytes:,} bytes, over the limit of {limit:,}"


def _as_dtype(dtype: object) -> np.dtype:
    if isinstance(dtype, _DtypeStub):
        return dtype.dtype
    if isinstance(dtype, (str, bytes)):
        return _DtypeStub(dtype).dtype
    raise Refused(f"it gives an array the dtype {type(dtype).__name__}")


def _resolve(obj: object, done: dict[int, object]) -> object:
    """Replace the stand-ins by the arrays and dtypes they describe, in place where possible.

    `done` maps each container already seen to its result, so shared references (and
    cycles) are visited once: a tuple of two references to a tuple of two references...
    stays linear.
    """
    key = id(obj)
    if key in done:
        return done[key]
    if isinstance(obj, _ArrayStub):
        if obj.value is None:
            raise ValueError("an array was never given its data")
        result: object = obj.value
    elif isinstance(obj, _DtypeStub):
        result = obj.dtype
    elif isinstance(obj, list):
        done[key] = obj
        obj[:] = [_resolve(v, done) for v in obj]
        result = obj
    elif isinstance(obj, dict):
        done[key] = obj
        for k, v in obj.items():
            obj[k] = _resolve(v, done)  # same keys, so iterating stays valid
        result = obj
    elif isinstance(obj, tuple):
        result = tuple(_resolve(v, done) for v in obj)
    else:
        return obj
    done[key] = result
    return result
