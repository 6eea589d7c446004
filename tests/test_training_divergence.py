"""A run whose test loss or weights become non-finite stops as one whose training loss does."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mindscope.data import load_data
from mindscope.model import AllConvNet
from mindscope.run import load_run, train_run
from mindscope.training import TrainConfig, TrainingDiverged, train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("log_every", [50, 1])  # caught at the epoch's end, or at a logged step
def test_a_non_finite_test_loss_stops_the_run_and_keeps_its_checkpoints(tmp_path, log_every):
    # lr 1e9: one step leaves the weights finite but so large that the test logits overflow.
    config = TrainConfig(epochs=1, lr=1e9, batch_size=64, log_every=log_every)
    out = tmp_path / "tnan"
    with pytest.raises(TrainingDiverged, match=r"the test loss became nan at epoch 1, step 1 .*lower --lr"):
        train_run(out, config, width=8, train_limit=64, test_limit=16, progress=False)
    run = load_run(out)
    assert run.epochs == [0]  # not marked finished: epoch 1 was never checkpointed
    torch.manual_seed(config.seed)  # the epoch-0 snapshot is still the untrained network
    splits = load_data("builtin", train_limit=64, test_limit=16)
    reference = AllConvNet(width=8, num_classes=len(splits.classes), in_channels=splits.image_shape[0])
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(run.model.state_dict()[name], value, rtol=0, atol=0)
    assert all(math.isfinite(m["value"]) for m in run.metrics if m["split"] == "test")  # no NaN point logged
    assert (out / "curves.png").is_file()


class _NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward (a finite loss, non-finite weights after the step)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


class _Linear(nn.Module):
    def __init__(self, inputs: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(inputs, classes)

    def forward(self, x):
        return F.linear(x.flatten(1), _NanGradient.apply(self.linear.weight), self.linear.bias)


def test_non_finite_weights_after_the_last_step_stop_training():
    splits = load_data("builtin", train_limit=32, test_limit=8)
    model = _Linear(math.prod(splits.image_shape), len(splits.classes))
    config = TrainConfig(epochs=1, batch_size=32, log_every=50)  # one step: no later loss to show it
    epochs = []
    with pytest.raises(TrainingDiverged, match=r"the weights of linear\.weight became nan at epoch 1, step 1 ") as err:
        train(model, splits, config, on_epoch=epochs.append, progress=False)
    assert (err.value.epoch, err.value.step) == (1, 1)
    assert epochs == []  # the epoch was not reported as done


def test_curves_of_a_run_that_diverged_before_its_first_log_draw_without_a_warning() -> None:
    import warnings

    from mindscope.render.training import training_curves

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns "No artists with labels" on an empty legend
        figure = training_curves([])
    assert figure.axes[0].get_legend() is None and figure.axes[0].get_lines() == []
