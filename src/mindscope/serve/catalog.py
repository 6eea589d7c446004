"""What the dashboard may open: the runs and scans under the folders given on the command line, or one outside model.

A run (or a scan folder) is named in URLs by its folder's label and its path inside that
folder ("runs/demo"). A name is resolved and must stay inside its folder and be a run (or a
scan): `../`, absolute paths and links that lead out are NotFound, never opened. Opened runs
are kept (their data and the models of the epochs asked for), each with one lock: hooks and
requires_grad flags live on the model itself, so two threads must not use it at once. Opened
scans are kept too; reading one needs no model.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mindscope.layers import describe_layers, numbered_layers, resolve_layer
from mindscope.report.baseline import data_pixel_mean
from mindscope.run import Run, is_run, read_metrics
from mindscope.scan import Scan, is_scan, open_scan
from mindscope.subject import Subject, open_subject

OUTSIDE = "model"  # the one name of an outside model given with --model
SEARCH_DEPTH = 4  # folders below a root searched for runs and scans
NAMES_TTL = 5.0  # seconds a listing of the runs is reused (runs appear while others train)


class NotFound(Exception):
    """A run name, path or page that does not exist here (or is not allowed): a 404."""


@dataclass(frozen=True)
class RunInfo:
    """One line of the Runs view."""

    name: str
    path: Path
    data: str  # the data's name, e.g. shapes10
    same_data: tuple  # runs with equal values look at the same test images
    width: int | None
    epochs: int  # the last epoch with a snapshot
    accuracy: float | None  # final test accuracy, where recorded


@dataclass(frozen=True)
class ScanInfo:
    """One line of the Scans table in the Runs view, read from the manifest (and summary once finished)."""

    name: str
    model: str  # the model spec the scan looked at
    data: str  # the data spec, or the run's own test split
    images: int
    methods: tuple[str, ...]
    missing: int  # shards not yet written; 0 with no summary means not merged
    accuracy: float | None  # once finished

    @property
    def finished(self) -> bool:
        return self.accuracy is not None


@dataclass
class Entry:
    """An opened run (or outside model): its subject, the models of epochs asked for, and its lock."""

    name: str
    subject: Subject
    device: str = "cpu"  # where its models run; inputs follow them
    lock: threading.Lock = field(default_factory=threading.Lock)
    _models: OrderedDict = field(default_factory=OrderedDict)
    _layers: list | None = None
    _pixel_mean: tuple[tuple[float, ...] | None] | None = None  # (the data's mean pixel or None,) once known

    def pixel_mean(self) -> tuple[float, ...] | None:
        """The data's mean pixel for the dataset-mean baseline; None: the normalisation's (a run's own data)."""
        if self._pixel_mean is None:
            self._pixel_mean = (data_pixel_mean(self.subject),)
        return self._pixel_mean[0]

    @property
    def epochs(self) -> list[int]:
        return list(self.subject.run.epochs) if self.subject.run is not None else []

    @property
    def last_epoch(self) -> int | None:
        return self.subject.run.epoch if self.subject.run is not None else None

    def model(self, epoch: int | None) -> nn.Module:
        """The model at `epoch` (None: as opened); call with `lock` held."""
        run = self.subject.run
        if epoch is None or run is None or epoch == run.epoch:
            return self.subject.model
        if epoch not in self._models:
            self._models[epoch] = run.model_at(epoch).to(self.device)
            while len(self._models) > 4:
                self._models.popitem(last=False)
        self._models.move_to_end(epoch)
        return self._models[epoch]

    def map_layers(self) -> list[tuple[str, str, tuple[int, ...]]]:
        """(name, label, (C, H, W)) of every module whose output is a stack of channel maps; call with `lock` held.

        The numbered layers come first, each as the walk-through reads it (the activation after it),
        then every other such module by its dotted name.
        """
        if self._layers is None:
            model, shape = self.subject.model, self.subject.image_shape
            if shape is None:
                raise ValueError(f"{self.name} takes no images (its input shape is unknown); no channel maps to draw")
            shapes = {info.name: info.output_shape for info in describe_layers(model, shape)}
            if self.subject.channels_last:  # a Keras model's maps are (N, H, W, C): list them as (N, C, H, W)
                shapes = {n: (s[0], s[3], s[1], s[2]) if len(s or ()) == 4 else s for n, s in shapes.items()}
            layers, seen = [], set()
            for number in numbered_layers(model):
                name = resolve_layer(model, number, output=True)
                if len(shapes.get(name) or ()) == 4 and name not in seen:
                    layers.append((name, f"L{number} ({name})", tuple(shapes[name][1:])))
                    seen.add(name)
            layers += [(n, n, tuple(s[1:])) for n, s in shapes.items() if n not in seen and len(s or ()) == 4]
            self._layers = layers
        return self._layers


class Catalog:
    """The runs under the given folders (or one outside model), opened on demand and kept."""

    def __init__(
        self, roots: Sequence[Path | str] = (), *, subject: Subject | None = None, device: str = "cpu"
    ) -> None:
        if subject is None and not roots:
            raise ValueError("give a run directory, a folder of runs, a scan folder, or --model SPEC to serve")
        self.roots: dict[str, Path] = {}
        for root in roots:
            path = Path(root).expanduser().resolve()
            if not path.is_dir():
                raise FileNotFoundError(
                    f"no folder {str(root)!r} to serve; give a run directory, a folder of runs or a scan folder"
                )
            label, n = path.name or "root", 2
            while label in self.roots:
                label, n = f"{path.name}-{n}", n + 1
            self.roots[label] = path
        self._entries: dict[str, Entry] = {}
        self._opening: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._resolved: dict[tuple[str, str], Path] = {}  # (kind, name) found inside its root
        self._names: tuple[float, list[str], list[str]] = (-math.inf, [], [])  # when, runs, scans
        self._scans: dict[str, Scan] = {}
        self.device = device
        if subject is not None:
            subject.model.to(device)
            self._entries[OUTSIDE] = Entry(OUTSIDE, subject, device)

    @property
    def outside(self) -> bool:
        return OUTSIDE in self._entries and not self.roots

    def names(self) -> list[str]:
        """Every run name under the roots (or the outside model's), sorted; looked up again after NAMES_TTL s."""
        if self.outside:
            return [OUTSIDE]
        return self._listing()[0]

    def scan_names(self) -> list[str]:
        """Every scan folder's name under the roots, sorted (none for an outside model)."""
        return [] if self.outside else self._listing()[1]

    def _listing(self) -> tuple[list[str], list[str]]:
        when, runs, scans = self._names
        if time.monotonic() - when < NAMES_TTL:
            return runs, scans
        found: tuple[list[str], list[str]] = ([], [])
        for label, root in self.roots.items():
            for kind, paths in enumerate(_find(root)):
                for path in paths:
                    rel = path.relative_to(root).as_posix()
                    found[kind].append(label if rel == "." else f"{label}/{rel}")
        self._names = (time.monotonic(), sorted(found[0]), sorted(found[1]))
        return self._names[1], self._names[2]

    def resolve(self, name: str) -> Path:
        """The run directory that `name` names, confined to its root; NotFound for anything else."""
        if self.outside:
            if name != OUTSIDE:
                raise NotFound(f"no run {name!r}: this dashboard shows one model, named {OUTSIDE!r}")
            return Path(OUTSIDE)
        return self._confined("run", name, is_run, "pick one from the Runs view")

    def resolve_scan(self, name: str) -> Path:
        """The scan folder that `name` names, confined to its root; NotFound for anything else."""
        return self._confined("scan", name, is_scan, "pick one from the Runs view")

    def _confined(self, kind: str, name: str, test, hint: str) -> Path:
        if (kind, name) in self._resolved:
            return self._resolved[kind, name]
        label, _, rest = name.partition("/")
        root = self.roots.get(label)
        if root is None or "\x00" in name or rest.startswith(("/", "\\")) or Path(rest).is_absolute():
            raise NotFound(f"no {kind} {name!r} here; {hint}")
        path = (root / rest).resolve()
        if not path.is_relative_to(root) or not test(path):
            raise NotFound(f"no {kind} {name!r} here; {hint}")
        self._resolved[kind, name] = path
        return path

    def scan(self, name: str) -> Scan:
        """The scan folder `name`, opened for reading (its manifest only: cheap) and kept."""
        path = self.resolve_scan(name)
        with self._guard:
            if name not in self._scans:
                self._scans[name] = open_scan(path)
            return self._scans[name]

    def scan_info(self, name: str) -> ScanInfo:
        """What a scan looked at and whether it is finished, from its manifest and summary."""
        scan = self.scan(name)
        plan = scan.plan
        accuracy = scan.summary["accuracy"] if scan.complete else None
        return ScanInfo(name, plan.source.model, plan.source.data or "the run's test split", plan.images,
                        plan.options.methods, len(plan.missing()), accuracy)  # fmt: skip

    def entry(self, name: str) -> Entry:
        """The opened run `name` (opened now if need be; slow the first time, so call it in a worker)."""
        if name in self._entries:
            return self._entries[name]
        path = self.resolve(name)
        with self._guard:
            opening = self._opening.setdefault(name, threading.Lock())
        with opening:  # one thread opens a run; others wait for it
            if name not in self._entries:
                subject = open_subject(path)
                subject.model.to(self.device)
                self._entries[name] = Entry(name, subject, self.device)
        return self._entries[name]

    def info(self, name: str) -> RunInfo:
        """Data, width, epochs and final accuracy of a run, read from its files without loading a model."""
        if self.outside:
            subject = self._entries[OUTSIDE].subject
            data = subject.data.name if subject.data is not None else "no data"
            return RunInfo(OUTSIDE, Path(OUTSIDE), data, (OUTSIDE,), None, 0, None)
        path = self.resolve(name)
        run = Run.open(path)
        try:
            epochs = [int(r[0]) for r in run.db.execute("SELECT epoch FROM checkpoints ORDER BY epoch")]
            metrics = read_metrics(run.db)
        finally:
            run.close()
        config = run.config
        data = config.get("data", {})
        last = max(epochs) if epochs else 0
        final = [
            m["value"]
            for m in metrics
            if (m["split"], m["name"], m["scope"], m["epoch"]) == ("test", "accuracy", "epoch", last)
        ]
        accuracy = final[-1] if final and not math.isnan(final[-1]) else None
        same = (data.get("spec"), data.get("test_limit"), config.get("train", {}).get("seed"))
        width = config.get("model", {}).get("width")
        return RunInfo(name, path, str(data.get("name", "?")), same, width, last, accuracy)


def _find(root: Path) -> tuple[list[Path], list[Path]]:
    """(runs, scan folders) at or below `root`, at most SEARCH_DEPTH folders down; hidden folders skipped.

    A scan's own folders hold only its shards, so the search stops at a scan; it goes on inside a
    run, whose folders may hold a scan of it (`mindscope scan RUN --out RUN/scan`).
    """
    runs, scans = [], []
    for folder, dirs, _files in os.walk(root):
        path = Path(folder)
        if is_scan(path):
            scans.append(path)
            dirs[:] = []
            continue
        if is_run(path):
            runs.append(path)
        if len(path.relative_to(root).parts) >= SEARCH_DEPTH:
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return runs, scans
