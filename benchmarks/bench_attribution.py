"""Benchmark integrated gradients: throughput, and time to 1% on every image, vs Captum and the walk-through.

    python benchmarks/bench_attribution.py [--runs demo,fashion-mnist,long,light] [--run RUN_DIR]
                                           [--outputs probability,logit] [--images 16] [--cache DIR]
                                           [--repeats 3] [--reference-steps 1024]

Networks: the `mindscope demo` recipe (AllConvNet width 32, 4 epochs, 5000 train / 1000
test built-in images, batch 32), the same recipe on Fashion-MNIST (the idx files of
Debian's dataset-fashion-mnist, or $MINDSCOPE_FASHION_MNIST; skipped, and said so, when
absent: nothing is downloaded), the demo run trained on to 10 epochs, and a lightly trained
smooth network (width 16, 2 epochs: few Gauss-Legendre steps suffice there). They are
trained once and cached in --cache (default /tmp/mindscope-bench-runs), with their
references; --run RUN_DIR benchmarks one run directory instead. On the first --images test
images, F = softmax probability (and/or the logit, --outputs) of the predicted class, black
baseline:
 (a) per-step throughput of integrated_gradients relative to the model's raw forward +
     input-gradient at the same batch size (target >= 0.9), on the first network;
 (b) time until every well-conditioned image has completeness error <= 1% AND map error
     <= 1% against a float64 Gauss-Legendre reference: mindscope with tolerance=0.01, and
     Captum's IntegratedGradients at its smallest sufficient n_steps in 2, 4, ..., 2048
     (found beforehand with the reference: an oracle no user has). Images with nothing to
     explain (mindscope's completeness_scale: |F(x) - F(black)| <= 1% of F) are set aside
     for both and counted: no relative completeness error means anything there (target:
     mindscope >= 5x faster than Captum on each network);
 (c) the walk-through's 3000-step left Riemann sum vs mindscope at the same or better error
     on the well-conditioned images of the first network (target >= 10x).
Times are the median of --repeats interleaved runs, wall and CPU (the machine may be shared);
gradient steps are printed too, as the load-independent cost. The map-error estimate is
judged against the reference: the fraction of images it bounds, and estimate / truth.
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from mindscope.attribution import class_logit, class_probability, completeness_scale, integrated_gradients
from mindscope.baselines import black
from mindscope.quadrature import gauss_legendre, left

TARGET = 0.01  # 1% relative completeness and map error
REFERENCE_STEPS = 1024  # Gauss-Legendre nodes of the float64 reference
CHECK_STEPS = 256  # ...checked against this many: their difference bounds the reference's own error
FASHION_FOLDERS = (os.environ.get("MINDSCOPE_FASHION_MNIST", ""), "/usr/share/datasets/fashion-mnist")
DEMO = {"width": 32, "train_limit": 5000, "test_limit": 1000}  # `mindscope demo`: 4 epochs, batch 32
OUTPUTS = {"probability": class_probability, "logit": class_logit}


def fashion_folder() -> str | None:
    return next((f for f in FASHION_FOLDERS if f and Path(f).is_dir() and any(Path(f).glob("*idx3-ubyte*"))), None)


def cached_run(name: str, cache: Path) -> Path | None:
    """Return the run directory of a benchmark network, training it once; None if its data is absent."""
    from mindscope.run import is_run, load_run, resume_run, train_run
    from mindscope.training import TrainConfig

    path, demo = cache / name, TrainConfig(epochs=4, batch_size=32)
    if is_run(path) and load_run(path).epoch >= {"long": 10, "light": 2}.get(name, 4):
        return path
    shutil.rmtree(path, ignore_errors=True)
    print(f"training the {name!r} network into {path} (once; cached) ...", flush=True)
    if name == "demo":
        train_run(path, demo, data="builtin", progress=False, **DEMO)
    elif name == "fashion-mnist":
        folder = fashion_folder()
        if folder is None:
            print(f"no Fashion-MNIST idx files in {[f for f in FASHION_FOLDERS if f]}: skipped (nothing downloads)")
            return None
        train_run(path, demo, data=f"fashion-mnist:{folder}", progress=False, **DEMO)
    elif name == "light":  # smooth: width 16, 2 epochs
        train_run(path, TrainConfig(epochs=2, batch_size=32), data="builtin", progress=False, **{**DEMO, "width": 16})
    elif name == "long":  # the demo run, trained on to 10 epochs (a larger total restarts the cosine decay)
        shutil.copytree(cached_run("demo", cache), path)
        resume_run(path, epochs=10, progress=False)
    else:
        raise ValueError(f"unknown network {name!r}; use demo, fashion-mnist or long")
    return path


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """Return (wall seconds, CPU seconds of this process, result) of one call."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds of each function, run in turn `repeats` times so load swings hit all alike."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            seen[name].append(timed(fn)[:2])
    return {name: tuple(float(torch.tensor(t).median(0).values[k]) for k in (0, 1)) for name, t in seen.items()}


class Truth:
    """The float64 reference for a batch: maps, F(x) - F(x'), and what completeness is relative to."""

    def __init__(
        self, model: nn.Module, x: Tensor, base: Tensor, mb: int, cache: Path | None, output: str, steps: int
    ) -> None:
        F = OUTPUTS[output]
        key = f"reference_gl{steps}_{x.shape[0]}.pt" if output == "probability" else f"reference_{output}_gl{steps}.pt"
        if cache is not None and (cache / key).is_file():
            saved = torch.load(cache / key)
        else:
            began = time.perf_counter()
            model64 = copy.deepcopy(model).double()
            x64, base64 = x.double(), base.double()
            fine = integrated_gradients(
                model64, x64, baseline=base64, rule=gauss_legendre(steps), max_batch=mb, output=F
            )
            check = min(CHECK_STEPS, steps // 2)
            half = integrated_gradients(
                model64, x64, baseline=base64, rule=gauss_legendre(check), max_batch=mb, output=F
            )
            saved = {
                "map": fine.attributions,
                "output": fine.output,
                "baseline_output": fine.baseline_output,
                "targets": fine.targets,
                "self_check": (fine.attributions - half.attributions).flatten(1).norm(dim=1)
                / fine.attributions.flatten(1).norm(dim=1),
                "check_steps": check,
                "seconds": time.perf_counter() - began,
            }
            if cache is not None:
                torch.save(saved, cache / key)
        self.map, self.targets = saved["map"], saved["targets"]
        self.delta = saved["output"] - saved["baseline_output"]
        self.scale, self.ill = completeness_scale(saved["output"], saved["baseline_output"])
        self.self_check, self.seconds = saved["self_check"], saved["seconds"]
        self.check_steps, self.steps = saved.get("check_steps", steps // 2), steps
        self.output, self.baseline_output = saved["output"], saved["baseline_output"]

    def errors(self, attributions: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
        """Per kept image, given their maps: completeness error relative to the scale, relative L2 map error."""
        a, ref = attributions.double(), self.map[keep]
        completeness = (a.flatten(1).sum(1) - self.delta[keep]).abs() / self.scale[keep]
        return completeness, (a - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)


def throughput(model: nn.Module, x: Tensor, base: Tensor, mb: int, repeats: int) -> float:
    """(a): integrated_gradients' gradient steps per second over a raw loop's, same batch size."""
    n_img = x.shape[0]
    steps = max(1, (8 * mb) // n_img)
    targets = model(x).argmax(1)
    z0 = x.repeat((mb + n_img - 1) // n_img, 1, 1, 1)[:mb]
    t0 = targets.repeat((mb + n_img - 1) // n_img)[:mb]

    def raw() -> None:
        for _ in range(steps * n_img // mb):
            z = z0.clone().requires_grad_(True)
            torch.autograd.grad(model(z).softmax(-1).gather(1, t0[:, None]).sum(), z)

    def ours() -> None:
        integrated_gradients(model, x, baseline=base, rule=gauss_legendre(steps), max_batch=mb)

    times = interleaved({"raw": raw, "ours": ours}, repeats)
    raw_rate, ours_rate = (steps * n_img // mb) * mb / times["raw"][0], steps * n_img / times["ours"][0]
    print(
        f"(a) throughput (wall): raw forward+input-gradient {raw_rate:.0f} steps/s, integrated_gradients "
        f"{ours_rate:.0f} steps/s, ratio {ours_rate / raw_rate:.2f} (target >= 0.9)",
        flush=True,
    )
    return ours_rate / raw_rate


ORACLE_STEPS = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def per_image_oracle(model: nn.Module, x: Tensor, base: Tensor, truth: Truth, keep: Tensor, mb: int, F) -> int:
    """Sum over images of each one's own smallest sufficient Gauss-Legendre n (in ORACLE_STEPS).

    What any per-image choice of a fixed rule could reach at best, knowing the answer: Captum
    spends the worst image's n on every image, so Captum / this is all that choosing n per image
    can win; winning more needs steps placed along the path where the integrand changes.
    """
    kept = torch.nonzero(keep).flatten()
    need = torch.full((len(kept),), ORACLE_STEPS[-1] * 2, dtype=torch.int64)
    todo = torch.ones(len(kept), dtype=torch.bool)
    for n in ORACLE_STEPS:
        if not todo.any():
            break
        idx = kept[todo]
        result = integrated_gradients(model, x[idx], truth.targets[idx], baseline=base[idx],
                                      rule=gauss_legendre(n), max_batch=mb, output=F)  # fmt: skip
        c, m = truth.errors(result.attributions, idx)
        done = (c <= TARGET) & (m <= TARGET)
        open_rows = torch.nonzero(todo).flatten()
        need[open_rows[done]] = n
        todo[open_rows[done]] = False
    return int(need.sum())


def time_to_one_percent(
    label: str, model: nn.Module, x: Tensor, base: Tensor, truth: Truth, mb: int, repeats: int, output: str
) -> dict[str, object] | None:
    """(b): Captum at its smallest sufficient n_steps / mindscope tolerance=0.01, on well-conditioned images."""
    from captum.attr import IntegratedGradients

    keep = ~truth.ill
    aside = [
        f"{int(i)} (F(x) {float(truth.output[i]):.4f}, F(black) {float(truth.baseline_output[i]):.4f})"
        for i in torch.nonzero(truth.ill).flatten()
    ]
    print(
        f"    {int(keep.sum())} of {x.shape[0]} images kept; set aside {len(aside)} with nothing to explain "
        f"(|F(x) - F(black)| <= 1% of F: the black image already scores the target){': ' if aside else ''}"
        + ", ".join(aside),
        flush=True,
    )
    if not keep.any():
        return None
    xk, bk, tk = x[keep], base[keep], truth.targets[keep]

    def ours() -> object:
        return integrated_gradients(model, xk, tk, baseline=bk, tolerance=TARGET, max_batch=mb, output=F)

    F = OUTPUTS[output]
    mine = ours()
    c, m = truth.errors(mine.attributions, keep)
    mine_c, mine_m = c, m
    ratio = mine.map_error.double() / m
    print(
        f"    map-error estimate / true map error: median {ratio.median():.2f}, min {ratio.min():.2f}, "
        f"max {ratio.max():.2f}; bounds the truth on {int((ratio >= 1).sum())}/{len(ratio)} images",
        flush=True,
    )
    print(
        f"    mindscope tolerance={TARGET}: steps {int(mine.steps.min())}..{int(mine.steps.max())} "
        f"(total {int(mine.steps.sum())}), converged {int(mine.converged.sum())}/{len(tk)}; true errors: "
        f"completeness max {c.max():.3%}, map max {m.max():.3%} (estimate max {mine.map_error.max():.3%}); "
        f"all within 1%: {bool(((c <= TARGET) & (m <= TARGET)).all())}",
        flush=True,
    )
    if truth.ill.any():
        aside_run = integrated_gradients(model, x[truth.ill], truth.targets[truth.ill], baseline=base[truth.ill],
                                         tolerance=TARGET, max_batch=mb, output=F)  # fmt: skip
        print(f"    (mindscope on the set-aside images: steps {aside_run.steps.tolist()}, judged against 1% of F)")

    captum = IntegratedGradients(lambda z: F(model(z)))

    def theirs(n: int) -> Tensor:
        return captum.attribute(xk, bk, target=tk, n_steps=n, internal_batch_size=mb)

    n_captum = None
    for n in [2**k for k in range(1, 12)]:
        c, m = truth.errors(theirs(n), keep)
        if bool(((c <= TARGET) & (m <= TARGET)).all()):
            n_captum = n
            print(
                f"    Captum IntegratedGradients (gausslegendre): smallest sufficient n_steps = {n} "
                f"(total {n * len(tk)}); true errors: completeness max {c.max():.3%}, map max {m.max():.3%}",
                flush=True,
            )
            break
    if n_captum is None:
        print("    Captum: no n_steps up to 2048 reached 1% on every kept image")
        return None
    oracle = per_image_oracle(model, x, base, truth, keep, mb, F)
    print(f"    each image's own smallest sufficient Gauss-Legendre n, summed (an oracle): {oracle} steps")
    times = interleaved({"mindscope": ours, "captum": lambda: theirs(n_captum)}, repeats)
    for k, kind in ((0, "wall"), (1, "CPU")):
        print(
            f"    {kind} time: Captum {times['captum'][k]:.2f} s, mindscope {times['mindscope'][k]:.2f} s; "
            f"Captum/mindscope {times['captum'][k] / times['mindscope'][k]:.2f}x (target >= 5x)",
            flush=True,
        )
    print(f"    gradient steps: Captum/mindscope {n_captum * len(tk) / int(mine.steps.sum()):.2f}x")
    return {
        "run": label, "F": output, "images": len(tk), "captum n": n_captum, "captum steps": n_captum * len(tk),
        "captum s": times["captum"][0], "ours steps": int(mine.steps.sum()), "ours s": times["mindscope"][0],
        "oracle steps": oracle, "captum error": f"{float(c.max()):.2%} / {float(m.max()):.2%}",
        "ours error": f"{float(mine_c.max()):.2%} / {float(mine_m.max()):.2%}", "estimate / truth": ratio,
    }  # fmt: skip


def summary(rows: list[dict[str, object]]) -> None:
    """Print (b) as one table, and the map-error estimate's calibration over every image of every row."""
    print(
        "\n(b) summary: time to <= 1% completeness and map error on every kept image\n"
        "| run | F | Captum n_steps (steps) | Captum s | mindscope steps | mindscope s | time ratio | step ratio "
        "| per-image GL oracle steps | true worst error completeness / map: Captum; mindscope "
        "| estimate / truth median (bounded) |\n|" + " --- |" * 11
    )
    for r in rows:
        e = r["estimate / truth"]
        print(
            f"| {r['run']} | {r['F']} | {r['captum n']} ({r['captum steps']}) | {r['captum s']:.2f} "
            f"| {r['ours steps']} | {r['ours s']:.2f} | {r['captum s'] / r['ours s']:.2f}x "
            f"| {r['captum steps'] / r['ours steps']:.2f}x | {r['oracle steps']} "
            f"| {r['captum error']}; {r['ours error']} "
            f"| {float(e.median()):.2f} ({int((e >= 1).sum())}/{len(e)}) |"
        )
    if rows:
        e = torch.cat([r["estimate / truth"] for r in rows])
        print(
            f"map-error estimate over all {len(e)} images: bounds the truth on {float((e >= 1).double().mean()):.1%}; "
            f"estimate / truth median {float(e.median()):.2f}, 5th percentile {float(e.quantile(0.05)):.2f}, "
            f"max {float(e.max()):.2f}"
        )


def walkthrough(model: nn.Module, x: Tensor, base: Tensor, truth: Truth, mb: int) -> float:
    """(c): the walk-through's left(3000) vs the cheapest mindscope tolerance matching its errors."""
    keep = ~truth.ill
    xk, bk, tk = x[keep], base[keep], truth.targets[keep]
    walk_wall, walk_cpu, walk = timed(lambda: integrated_gradients(model, xk, tk, baseline=bk, rule=left(3000)))
    wc, wm = truth.errors(walk.attributions, keep)
    level, tolerance = float(min(wc.max(), wm.max())), float(max(wc.max(), wm.max()))
    while True:  # search down from the looser of its two errors
        match_wall, match_cpu, matched = timed(
            lambda t=tolerance: integrated_gradients(model, xk, tk, baseline=bk, tolerance=t, max_steps=3000)
        )
        mc, mm = truth.errors(matched.attributions, keep)
        if bool(((mc <= wc.max()) & (mm <= wm.max())).all()) or tolerance < level / 8:
            break
        tolerance /= 2
    print(
        f"(c) walk-through left Riemann 3000 steps on {len(tk)} images: {walk_wall:.1f} s wall, {walk_cpu:.1f} s CPU, "
        f"completeness max {wc.max():.3%}, map max {wm.max():.3%}\n"
        f"    mindscope tolerance={tolerance:.2g}: {match_wall:.2f} s wall, steps total {int(matched.steps.sum())}, "
        f"completeness max {mc.max():.3%}, map max {mm.max():.3%}; time ratio {walk_wall / match_wall:.1f}x wall, "
        f"{walk_cpu / match_cpu:.1f}x CPU (target >= 10x)"
    )
    return walk_wall / match_wall


def open_for_benchmark(path: Path, images: int, device: torch.device):
    """(the loaded run, its model in eval mode with frozen weights, the first test images, their black baseline)."""
    from mindscope.run import load_run

    loaded = load_run(path)
    model = loaded.model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = loaded.data
    x = data.inputs(data.test, list(range(images))).to(device)
    return loaded, model, x, black(x, data.normalization)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="demo,fashion-mnist,long,light", help="networks to train once and benchmark")
    parser.add_argument("--outputs", default="probability,logit", help="F: probability and/or logit")
    parser.add_argument("--reference-steps", type=int, default=REFERENCE_STEPS, help="float64 Gauss-Legendre nodes")
    parser.add_argument("--run", default=None, help="benchmark this run directory instead")
    parser.add_argument("--cache", default="/tmp/mindscope-bench-runs", help="where the networks are kept")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-walkthrough", action="store_true", help="skip (c), the slowest part")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device, mb, cache = torch.device(args.device), args.max_batch, Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if args.run is not None:
        runs = {Path(args.run).name: Path(args.run)}
    else:
        runs = {name: cached_run(name, cache) for name in args.runs.split(",")}
    headline: dict[str, float] = {}
    rows: list[dict[str, object]] = []
    first = True
    for name, path in runs.items():
        if path is None:
            continue
        loaded, model, x, base = open_for_benchmark(path, args.images, device)
        data = loaded.data
        print(
            f"\n== {name}: {data.name}, epoch {loaded.epoch}, {x.shape[0]} test images, device {device}, "
            f"{torch.get_num_threads()} threads, max_batch {mb}; F of the predicted class, black baseline",
            flush=True,
        )
        if first:
            headline["IG steps/s / raw forward+gradient steps/s"] = throughput(model, x, base, mb, args.repeats)
        for output in args.outputs.split(","):
            print(f"  -- F = {output}", flush=True)
            truth = Truth(model, x, base, mb, path if args.run is None else None, output, args.reference_steps)
            print(
                f"    reference: Gauss-Legendre {truth.steps} in float64 ({truth.seconds:.0f} s when built); "
                f"vs {truth.check_steps} nodes it moves by at most {truth.self_check.max():.1e} (relative L2)",
                flush=True,
            )
            row = time_to_one_percent(name, model, x, base, truth, mb, args.repeats, output)
            if row is not None:
                rows.append(row)
                headline[f"Captum IG / mindscope tolerance IG (time to 1%, {name}, {output})"] = (
                    row["captum s"] / row["ours s"]
                )
            if first and output == "probability" and not args.skip_walkthrough and (~truth.ill).any():
                headline["3000-step left Riemann / mindscope at equal error (time)"] = walkthrough(
                    model, x, base, truth, mb
                )
        first = False
    summary(rows)
    return headline


if __name__ == "__main__":
    main()
