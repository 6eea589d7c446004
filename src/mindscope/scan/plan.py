"""A scan's plan: which images, cut into which shards, by which model, and the manifest that says so.

Shard k holds images [k * shard_size, (k + 1) * shard_size) of the data set's first `images`,
whatever machine or engine computes it, so a shard's files are the same wherever they come
from. `--shard I/N` takes shards I, I + N, I + 2N, ...: N processes split the work with no
coordination. The manifest (SCAN/scan.json) is written before any shard; its `identity`
(model source, a hash of the weights, data spec, image count and every option) decides
whether a folder holds this scan or a different one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mindscope.layers import numbered_layers, resolve_layers
from mindscope.scan.files import write_bytes
from mindscope.scan.options import ScanOptions, ScanSource

MANIFEST = "scan.json"
SHARDS = "shards"
FORMAT = 1


@dataclass(frozen=True)
class Shard:
    number: int
    start: int  # first image index
    stop: int  # one past the last

    def __len__(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs besides the model and data: picklable, recorded in the manifest."""

    out: Path
    source: ScanSource
    options: ScanOptions
    images: int  # the data set's first `images` test images are scanned
    classes: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (C, H, W)
    layers: tuple[str, ...]  # resolved module names for activation statistics
    weights: str  # sha256 of the model's state dict
    card: dict | None = None  # an outside model's card as used (given, read or assumed); None for a run

    @property
    def identity(self) -> dict:
        """What makes two scans the same scan: refuse to mix shards of different ones."""
        return {
            "model": self.source.model,
            "weights": self.weights,
            "card": self.card,
            "data": self.source.data,
            "images": self.images,
            "layers": list(self.layers),
            **self.options.record(),
        }

    @property
    def shards(self) -> list[Shard]:
        size = self.options.shard_size
        return [Shard(k, lo, min(lo + size, self.images)) for k, lo in enumerate(range(0, self.images, size))]

    def shard_files(self, shard: Shard | int) -> tuple[Path, Path]:
        """(maps and sums .safetensors, per-image rows .parquet) of one shard."""
        k = shard.number if isinstance(shard, Shard) else shard
        folder = Path(self.out) / SHARDS
        return folder / f"{k:06d}.safetensors", folder / f"{k:06d}.parquet"

    def is_done(self, shard: Shard | int) -> bool:
        """A shard is done when both of its files exist (the table is written last)."""
        return all(p.exists() for p in self.shard_files(shard))

    def missing(self) -> list[Shard]:
        return [s for s in self.shards if not self.is_done(s)]

    def record(self) -> dict:
        return {
            "format": FORMAT,
            "identity": self.identity,
            "source": asdict(self.source),
            "options": self.options.record(),
            "images": self.images,
            "shards": len(self.shards),
            "classes": list(self.classes),
            "image_shape": list(self.image_shape),
            "layers": list(self.layers),
            "weights": self.weights,
            "card": self.card,
        }

    @classmethod
    def from_record(cls, out: Path, record: dict) -> Plan:
        return cls(
            Path(out),
            ScanSource(**record["source"]),
            ScanOptions.from_record(record["options"]),
            int(record["images"]),
            tuple(record["classes"]),
            tuple(record["image_shape"]),  # type: ignore[arg-type]
            tuple(record["layers"]),
            record["weights"],
            record.get("card"),
        )


def is_scan(path: Path | str) -> bool:
    """Whether `path` is a scan folder (it holds the manifest that `mindscope scan` writes first)."""
    return (Path(path) / MANIFEST).is_file()


def parse_shard(spec: str) -> tuple[int, int]:
    """'I/N' -> (I, N), with 0 <= I < N."""
    index, slash, count = spec.partition("/")
    if not slash or not index.strip().isdigit() or not count.strip().isdigit() or int(count) < 1:
        raise ValueError(f"--shard must look like I/N with 0 <= I < N (e.g. 0/4), got {spec!r}")
    i, n = int(index), int(count)
    if i >= n:
        raise ValueError(
            f"--shard {spec}: I must be below N (shards are numbered 0..{n - 1}); use 0/{n} .. {n - 1}/{n}"
        )
    return i, n


def weights_hash(model: nn.Module) -> str:
    """sha256 of the model's state dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        # reshape(-1): a channels_last tensor with a size-1 dimension counts as contiguous yet keeps
        # a stride > 1 there, which view(uint8) refuses; the flat copy has the logical order.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def resolve_scan_layers(model: nn.Module, specs: tuple[str, ...] | None) -> tuple[str, ...]:
    """The layers whose statistics a scan keeps: the given specs, or every numbered layer's output."""
    if specs is None:
        specs = tuple(str(n) for n in numbered_layers(model))
        if not specs:
            return ()
    if specs == ():
        return ()
    return tuple(resolve_layers(model, list(specs), output=True))


def read_manifest(out: Path) -> dict | None:
    """The manifest of `out`, or None when there is none; a damaged one is a ValueError."""
    path = Path(out) / MANIFEST
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        Plan.from_record(out, record)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} is damaged ({exc}); delete {out} to start the scan again") from None
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} has format {record.get('format')!r}, this mindscope reads {FORMAT}; upgrade it")
    return record


def open_plan(out: Path) -> Plan:
    """The plan recorded in `out` (for --merge and readers)."""
    record = read_manifest(out)
    if record is None:
        raise ValueError(f"{out} holds no scan ({MANIFEST} missing); start one with 'mindscope scan ... --out {out}'")
    return Plan.from_record(out, record)


def claim(plan: Plan) -> None:
    """Make `plan.out` this scan's folder: check what is there, then write the manifest if absent.

    Nothing is written when the folder holds a different scan, or files that are not a scan.
    """
    out = Path(plan.out)
    record = read_manifest(out)
    if record is None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder for the scan")
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"--out {out} holds files but no scan ({MANIFEST}); choose a new or empty folder")
        (out / SHARDS).mkdir(parents=True, exist_ok=True)
        write_bytes(out / MANIFEST, (json.dumps(plan.record(), indent=1) + "\n").encode())
        return
    differences = _differences(record["identity"], plan.identity)
    if differences:
        raise ValueError(
            f"--out {out} holds a different scan ({'; '.join(differences)}); "
            "choose another --out, or delete that folder to start over"
        )
    (out / SHARDS).mkdir(exist_ok=True)


def _differences(old: dict, new: dict) -> list[str]:
    def show(value: object) -> str:
        # Hashes are shortened, inside their quotes; every other value (a model spec) is shown in full.
        if isinstance(value, str) and len(value) > 16 and all(c in "0123456789abcdef" for c in value):
            return f'"{value[:12]}..."'
        return json.dumps(value)

    return [f"{key} {show(old.get(key))} there, {show(new.get(key))} here" for key in new if old.get(key) != new[key]]
