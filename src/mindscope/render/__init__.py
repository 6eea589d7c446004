"""Figures, overlays and GIFs: the only part of mindscope that draws.

Functions return matplotlib `Figure`s (no pyplot state) or PIL images, ready for a
notebook (`display(fig)`), `fig.savefig(...)`, or the HTML report.
"""

from mindscope.render.activations import (
    channel_grid,
    channel_statistics_figure,
    layer_gif_frames,
    layer_statistics_figure,
    mosaic_tiles,
    save_gif,
    top_activating_figure,
)
from mindscope.render.attribution import (
    attribution_panels,
    clip_outliers,
    heatmap,
    interior_frames,
    overlay,
    saturation_curve,
)
from mindscope.render.evaluation import deletion_figure, localisation_figure, randomisation_figure
from mindscope.render.features import attribution_figure, feature_bars, sequence_heatmap
from mindscope.render.gradcam import grad_cam_figure
from mindscope.render.layer import layer_attribution_figure
from mindscope.render.tables import format_change, format_change_table
from mindscope.render.training import training_curves
from mindscope.render.visualisation import channel_looks_figure, feature_visualisation_figure
from mindscope.render.weights import weight_histogram_figures, weight_percentile_figure, weight_ridge_figure

__all__ = [
    "format_change",
    "format_change_table",
    "attribution_figure",
    "attribution_panels",
    "channel_grid",
    "channel_looks_figure",
    "channel_statistics_figure",
    "clip_outliers",
    "deletion_figure",
    "feature_bars",
    "feature_visualisation_figure",
    "grad_cam_figure",
    "heatmap",
    "interior_frames",
    "layer_attribution_figure",
    "layer_gif_frames",
    "layer_statistics_figure",
    "mosaic_tiles",
    "localisation_figure",
    "overlay",
    "randomisation_figure",
    "saturation_curve",
    "save_gif",
    "sequence_heatmap",
    "top_activating_figure",
    "training_curves",
    "weight_histogram_figures",
    "weight_percentile_figure",
    "weight_ridge_figure",
]
