"""Join a scan's shards into its results: the table, the per-class maps, layer statistics, a summary.

    SCAN/images.parquet          every shard's rows, streamed into one table
    SCAN/classes.safetensors     per method: mean map and mean |map| per attributed class, counts
    SCAN/layers.safetensors      per layer: the statistics of one pass over every image
    SCAN/summary.json            convergence, the worst-converged (well-conditioned) and the most confidently
                                 wrong images

Reading a shard takes only its sums (never its maps), so memory stays one class-sum per
method and one set of layer accumulators, whatever the number of images.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes

from mindscope.scan.files import remove_leftovers, write_bytes
from mindscope.scan.plan import SHARDS, Plan
from mindscope.scan.statistics import Moments
from mindscope.scan.table import COLUMNS, arrow, read_table, write_merged

TABLE = "images.parquet"
CLASSES = "classes.safetensors"
LAYERS = "layers.safetensors"
SUMMARY = "summary.json"
WORST = 20  # images listed per summary list


def merge(plan: Plan) -> dict:
    """Write the scan's joined results from its complete set of shards; return the summary."""
    missing = plan.missing()
    if missing:
        numbers = ", ".join(str(s.number) for s in missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{len(missing)} of {len(plan.shards)} shards of {plan.out} are missing ({numbers}); "
            "run them with --shard I/N, or run the scan again without --shard"
        )
    out = Path(plan.out)
    remove_leftovers([out], [TABLE, CLASSES, LAYERS, SUMMARY])
    rows = write_merged(out / TABLE, [plan.shard_files(s)[1] for s in plan.shards])
    expected = plan.images * len(plan.options.methods)
    if rows != expected:  # a shard file from another scan, or edited by hand
        raise ValueError(f"the shards of {out} hold {rows} rows, expected {expected}; delete {out / SHARDS} and rerun")
    sums, counts, layers, saturation = _sums(plan)
    tensors = {"counts": counts}
    for method, (total, total_abs) in sums.items():
        denominator = counts.clamp_min(1).double().view(-1, 1, 1, 1)
        tensors[f"mean/{method}"] = (total / denominator).float()
        tensors[f"mean_abs/{method}"] = (total_abs / denominator).float()
    write_bytes(out / CLASSES, safetensors_bytes(tensors, {"classes": json.dumps(list(plan.classes))}))
    layer_tensors = {k: v for name, m in layers.items() for k, v in m.tensors(f"{name}/").items()}
    write_bytes(out / LAYERS, safetensors_bytes(layer_tensors, {"saturation": json.dumps(saturation),
                                                                "layers": json.dumps(list(layers))}))  # fmt: skip
    summary = summarise(plan, out / TABLE, layers)
    write_bytes(out / SUMMARY, (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _sums(plan: Plan):
    sums: dict[str, list[torch.Tensor]] = {}
    counts = torch.zeros(len(plan.classes), dtype=torch.int64)
    layers: dict[str, Moments] = {}
    saturation: dict[str, str | None] = {}
    for shard in plan.shards:
        with safe_open(str(plan.shard_files(shard)[0]), "pt") as f:
            saturation = json.loads(f.metadata()["saturation"])
            counts += f.get_tensor("class_counts")
            for method in plan.options.methods:
                parts = [f.get_tensor(f"class_sum/{method}"), f.get_tensor(f"class_abs_sum/{method}")]
                sums[method] = parts if method not in sums else [a + b for a, b in zip(sums[method], parts)]
            for name in plan.layers:
                keys = ("mean", "m2", "active", "saturated", "maximum", "shape")
                part = Moments.from_tensors({f"{k}": f.get_tensor(f"layer/{name}/{k}") for k in keys}, "",
                                            saturation.get(name))  # fmt: skip
                layers[name] = part if name not in layers else layers[name].merge(part)
    return sums, counts, layers, saturation


def method_columns(table, method: str | None = None) -> dict[str, np.ndarray]:
    """numpy columns of the rows of `method`, sorted by index: nulls as nan (floats) or False (bools)."""
    pa = arrow()
    if method is not None:
        table = table.filter(pa.compute.equal(table["method"], method))
    table = table.sort_by("index")
    columns = {}
    for name, kind in COLUMNS.items():
        column = table[name]
        if kind == "bool_":
            column = pa.compute.fill_null(column, False)
        dtype = np.float64 if kind == "float64" else kind.rstrip("_")
        columns[name] = column.to_numpy(zero_copy_only=False).astype(dtype)
    return columns


def worst_order(columns: dict[str, np.ndarray]) -> np.ndarray | None:
    """Well-conditioned rows, least accurate map first: by the larger of the relative completeness and map errors.

    Ill-conditioned rows are left out: their baseline already scores about F(x), so their maps
    explain nothing, are not refined, and their relative errors divide by nearly nothing; ranked
    with the rest they would fill the list. None where the method has no completeness error
    (gradient, SmoothGrad). Ties go by image index.
    """
    error = columns["relative_completeness_error"]
    if np.isnan(error).all():
        return None
    kept = np.flatnonzero(~columns["ill_conditioned"])
    badness = np.nan_to_num(np.fmax(error[kept], columns["map_error"][kept]), nan=-np.inf)
    return kept[np.lexsort((columns["index"][kept], -badness))]


def wrong_order(columns: dict[str, np.ndarray]) -> np.ndarray:
    """The rows of wrong predictions, most confident first; ties go by image index."""
    wrong = np.flatnonzero(columns["prediction"] != columns["label"])
    return wrong[np.lexsort((columns["index"][wrong], -columns["probability"][wrong]))]


def image_items(columns: dict[str, np.ndarray], order: np.ndarray, classes: tuple[str, ...]) -> list[dict]:
    """The rows `order` as plain dicts (NaN as None), with their label's and prediction's class names."""
    keep = ("index", "label", "prediction", "probability", "target", "delta", "relative_completeness_error",
            "map_error", "steps", "converged", "ill_conditioned")  # fmt: skip
    items = []
    for i in order:
        item = {k: _plain(columns[k][i]) for k in keep}
        item["label_name"], item["prediction_name"] = classes[item["label"]], classes[item["prediction"]]
        items.append(item)
    return items


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
    return value.item() if isinstance(value, (np.integer, np.bool_)) else value


def summarise(plan: Plan, table_path: Path, layers: dict[str, Moments]) -> dict:
    """How many images converged, the worst-converged, the most confidently wrong, dead channels."""
    table = read_table(table_path)
    methods = {}
    for method in plan.options.methods:
        c = method_columns(table, method)
        entry: dict = {"images": len(c["index"]), "steps_mean": float(c["steps"].mean()),
                       "steps_max": int(c["steps"].max()), "seconds": float(c["seconds"].sum())}  # fmt: skip
        error, ill = c["relative_completeness_error"], c["ill_conditioned"]
        if not np.isnan(error).all():
            # Ill-conditioned images have nothing to explain: their error is measured against a floor,
            # not |F(x) - F(x')|, so the figures, like "worst", leave them out.
            entry["ill_conditioned"] = int(ill.sum())
            kept = error[~ill]
            if not np.isnan(kept).all():
                entry["completeness_error_median"] = float(np.nanmedian(kept))
                entry["completeness_error_max"] = float(np.nanmax(kept))
            entry["worst"] = image_items(c, worst_order(c)[:WORST], plan.classes)
        if plan.options.tolerance is not None and method == "integrated":
            # Ill-conditioned images are not refined by design: converged counts the others.
            entry["converged"] = int((c["converged"] & ~ill).sum())
            entry["well_conditioned"] = int((~ill).sum())
            entry["tolerance"] = plan.options.tolerance
        methods[method] = entry
    c = method_columns(table, plan.options.methods[0])
    return {
        "images": plan.images,
        "accuracy": float((c["prediction"] == c["label"]).mean()),
        "methods": methods,
        "most_confident_wrong": image_items(c, wrong_order(c)[:WORST], plan.classes),
        "dead_channels": {name: np.flatnonzero(m.maximum <= 0).tolist() for name, m in layers.items()},
    }
