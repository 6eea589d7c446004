"""keras:FILE - a Keras 3 model on the torch backend, its layers exposed as submodules named after them.

A Keras 3 model on the torch backend is an `nn.Module`, but its layers are not submodules:
`named_modules()` shows none of them, its layers' own `__call__` bypasses forward hooks, and
its parameters include Keras's integer seed state. The adapter fixes all three. `KerasModel`
is a module with one child per Keras layer, named after the layer (`conv2d_3`), of a class
named after the Keras class (`Conv2D`); its forward runs Keras's own graph executor with
each layer called through its child, so a hook on `conv2d_3` sees exactly what the layer
returned. Each child registers its layer's float variables under their Keras names
(`conv2d_3.kernel`): trainable ones as parameters, the others (a BatchNormalization's
moving statistics) as buffers; integer state is left out. They are the very tensors Keras
computes with, so a weight changed in place changes the model. A nested Functional or
Sequential model becomes a nested `KerasModel`.

mindscope reads a model's outputs as logits and applies softmax itself. A model that ends in
softmax (a Dense or Activation layer with activation="softmax", or a Softmax layer) therefore
returns its logits here: that layer's activation becomes linear, or the Softmax layer passes
its input through, so mindscope's softmax gives exactly the model's probabilities. The
card fields returned by `load_keras` say so under "output".

The file is read with `safe_mode=True`, so a Lambda layer (code stored in the file) is
refused. Keras picks its backend when first imported: KERAS_BACKEND is set to torch here
if keras has not been imported yet; a keras already running on another backend is refused.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mindscope.models.naming import module_name, named_class

__all__ = ["KerasLayer", "KerasModel", "import_keras", "load_keras"]

INSTALL = "keras:FILE needs keras and h5py: pip install 'mindscope[keras]'"


def import_keras() -> Any:
    """Import keras on the torch backend; refuse, in one line, where that cannot be had."""
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"  # read once, when keras is first imported
    try:
        import keras
    except ImportError as error:
        if error.name in ("keras", "h5py"):
            raise ValueError(INSTALL) from None
        raise ValueError(f"keras does not import ({error}); mindscope needs it on the torch backend") from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise ValueError(
            f"keras was already imported with the {backend!r} backend; mindscope needs the torch backend: "
            "set KERAS_BACKEND=torch before anything imports keras"
        )
    return keras


SELU_FLOOR = -1.0507009873554805 * 1.6732632423543772  # -scale * alpha, Keras's SELU constants as torch's


def _saturation_floor(layer: Any) -> float | None:
    """Where the layer's output flattens out: an ELU layer at -alpha, an elu/selu activation at -1/SELU_FLOOR."""
    if type(layer).__name__ == "ELU":
        return -float(getattr(layer, "alpha", 1.0))
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return {"elu": -1.0, "selu": SELU_FLOOR}.get(name)


class KerasLayer(nn.Module):
    """One Keras layer as a module: its float variables as parameters and buffers, its call as forward."""

    def __init__(self, layer: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_layer", layer)  # not a submodule: its variables are registered below
        self.saturation_floor = _saturation_floor(layer)
        object.__setattr__(self, "_buffer_variables", {})
        names: set[str] = set()
        for variable in layer.variables:
            value = variable.value
            if not (isinstance(value, Tensor) and value.is_floating_point()):
                continue  # seed-generator state and other integer counters are not weights
            name = module_name(variable.name, "variable", names)
            if variable.trainable:
                self.register_parameter(name, value)  # Keras keeps it as this very nn.Parameter
            else:
                self.register_buffer(name, value)
                self._buffer_variables[name] = variable

    passthrough = False  # a final Softmax layer: return its input, the logits (see the module docstring)
    saturation_floor: float | None = None  # where an ELU output flattens, for activation statistics

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.passthrough:
            return args[0]
        if getattr(self._layer, "_call_has_training_arg", False):
            kwargs.setdefault("training", self.training)
        return self._layer(*args, **kwargs)

    def _apply(self, fn: Any, recurse: bool = True) -> KerasLayer:
        super()._apply(fn, recurse)
        for name, variable in self._buffer_variables.items():  # nn.Module replaces buffers; Keras must see it
            moved, kept = self._buffers[name], variable.value
            if moved is not kept:
                kept.data = moved
                self._buffers[name] = kept
        return self


def _is_graph(layer: Any) -> bool:
    """A Functional model, or a Sequential one, whose layers can be run one by one."""
    graph = getattr(layer, "_functional", layer)
    return graph is not None and hasattr(graph, "_run_through_graph") and hasattr(graph, "_nodes_by_depth")


class KerasModel(nn.Module):
    """A Keras Functional or Sequential model with one child module per layer, named after the layer."""

    layer_channel_axis = -1  # Keras layers keep channels last, (N, H, W, C): the looks read this default

    def __init__(self, model: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_keras", model)
        self._names: dict[int, str] = {}  # id(Keras layer) -> child name
        taken: set[str] = set()
        for layer in model.layers:
            if type(layer).__name__ == "InputLayer":  # a placeholder: it computes nothing
                continue
            child = _wrap(layer)
            name = module_name(layer.name, type(layer).__name__.lower(), taken)
            self.add_module(name, child)
            self._names[id(layer)] = name

    def forward(self, x: Tensor, **_: Any) -> Any:
        """Run the Keras graph on one batch; `training` and `mask` from an enclosing graph are not used."""
        keras = import_keras()
        graph = getattr(self._keras, "_functional", self._keras)
        with keras.device(str(x.device)):
            if graph is None:  # a Sequential model never built as a graph: its layers in order
                for layer in self._keras.layers:
                    x = self._modules[self._names[id(layer)]](x)
                return x
            outputs = graph._run_through_graph([x], operation_fn=self._child_for)
        return outputs[0] if isinstance(outputs, (list, tuple)) and len(outputs) == 1 else outputs

    def next_module(self, name: str) -> str | None:
        """The module that alone takes module `name`'s output in the Keras graph, or None.

        Only this graph's own nodes count: a layer of a loaded Sequential also keeps the
        outbound nodes of the graphs Keras built while loading it. A dotted name is followed
        in the nested model that holds it, and out of it where it makes that model's output.
        """
        head, _, rest = name.partition(".")
        child = self._modules.get(head)
        if rest:
            if not isinstance(child, KerasModel):
                return None
            inner = child.next_module(rest)
            if inner is not None:
                return f"{head}.{inner}"
            return self.next_module(head) if child._output_layer() is child._layer_of(rest) else None
        layer = self._layer_of(name)
        graph = getattr(self._keras, "_functional", self._keras)
        if layer is None:
            return None
        if graph is None:  # a Sequential never built as a graph runs its layers in order
            order = [n for n in (self._names.get(id(la)) for la in self._keras.layers) if n is not None]
            return order[order.index(name) + 1] if name in order[:-1] else None
        nodes = {id(node) for level in getattr(graph, "_nodes_by_depth", {}).values() for node in level}
        users = {id(n.operation): n.operation for n in getattr(layer, "_outbound_nodes", []) if id(n) in nodes}
        if len(users) != 1:
            return None
        return self._names.get(next(iter(users)))

    def _layer_of(self, name: str) -> Any:
        """The Keras layer (or nested model) behind child `name`, or None."""
        child = self._modules.get(name)
        return child._layer if isinstance(child, KerasLayer) else getattr(child, "_keras", None)

    def _output_layer(self) -> Any:
        """The layer that makes this model's one output, or None."""
        graph = getattr(self._keras, "_functional", self._keras)
        outputs = getattr(graph, "outputs", None) or []
        if len(outputs) != 1:
            return None
        return getattr(getattr(outputs[0], "_keras_history", None), "operation", None)

    def _child_for(self, operation: Any) -> Any:
        name = self._names.get(id(operation))
        return operation if name is None else self._modules[name]

    def __deepcopy__(self, memo: dict) -> KerasModel:
        keras = import_keras()
        clone = keras.models.clone_model(self._keras)
        clone.set_weights(self._keras.get_weights())
        copied = _wrap(clone)
        for mine, theirs in zip(self.modules(), copied.modules()):
            theirs.training = mine.training
            if isinstance(mine, KerasLayer):
                theirs.passthrough = mine.passthrough
        # keep the input adapters (a channels-last permute from mindscope.subject) the copy would lose
        copied._forward_pre_hooks.update(self._forward_pre_hooks)
        copied._forward_pre_hooks_with_kwargs.update(self._forward_pre_hooks_with_kwargs)
        memo[id(self)] = copied
        return copied


def _wrap(layer: Any) -> nn.Module:
    base = KerasModel if _is_graph(layer) else KerasLayer
    return named_class(base, type(layer).__name__)(layer)


def _carried(model: Any) -> dict[str, Any]:
    """The card fields the model states: its input shape, its layout, and a pixel range a Rescaling implies."""
    carried: dict[str, Any] = {}
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, tuple) and len(shape) > 1 and all(isinstance(d, int) for d in shape[1:]):
        carried["input_shape"] = tuple(shape[1:])
        formats = [getattr(layer, "data_format", None) for layer in model.layers]
        data_format = next((f for f in formats if f in ("channels_last", "channels_first")), None)
        if len(shape) == 4 and data_format is not None:
            carried["layout"] = "NHWC" if data_format == "channels_last" else "NCHW"
    first = next((layer for layer in model.layers if type(layer).__name__ != "InputLayer"), None)
    if type(first).__name__ == "Rescaling":  # x * scale + offset inside the model: it expects raw pixels
        scale, offset = getattr(first, "scale", None), getattr(first, "offset", 0.0)
        if isinstance(scale, (int, float)) and isinstance(offset, (int, float)):
            low, high = offset, 255 * scale + offset
            if math.isclose(low, 0.0, abs_tol=1e-6) and math.isclose(high, 1.0, rel_tol=1e-4):
                carried["pixel_range"] = (0.0, 255.0)
            elif math.isclose(low, -1.0, rel_tol=1e-4) and math.isclose(high, 1.0, rel_tol=1e-4):
                carried["pixel_range"] = (0.0, 255.0)
    return carried


def _final_softmax(model: Any) -> Any | None:
    """The layer whose softmax makes the model's (N, classes) output, in a nested model too; else None."""
    keras = import_keras()
    outputs = getattr(model, "outputs", None) or []
    if len(outputs) != 1 or len(outputs[0].shape) != 2:
        return None
    history = getattr(outputs[0], "_keras_history", None)
    layer = getattr(history, "operation", None)
    if _is_graph(layer):
        return _final_softmax(layer)
    kind, activation = type(layer).__name__, getattr(layer, "activation", None)
    if kind in ("Dense", "EinsumDense", "Activation") and activation is keras.activations.softmax:
        return layer
    if kind == "Softmax" and getattr(layer, "axis", None) in (-1, 1, [-1], [1], (-1,), (1,)):
        return layer
    return None


def _expose_logits(model: Any, module: nn.Module) -> str | None:
    """Make a model that ends in softmax return the logits before it; say what was done, or None."""
    layer = _final_softmax(model)
    if layer is None:
        return None
    if type(layer).__name__ == "Softmax":
        child = next(m for m in module.modules() if isinstance(m, KerasLayer) and m._layer is layer)
        child.passthrough = True
        how = "its Softmax layer passes the logits through"
    else:
        layer.activation = import_keras().activations.linear  # saved with the layer: a copy keeps it
        how = "its softmax activation is replaced by linear"
    return (
        f"logits: the model ends in softmax (layer {layer.name!r}); {how}, "
        "and mindscope applies softmax, giving the model's own probabilities"
    )


def load_keras(path: Path) -> tuple[KerasModel, dict[str, Any]]:
    """Load keras:FILE in safe mode and wrap it; return the module and the card fields the model states."""
    keras = import_keras()
    try:
        with keras.device("cpu"):
            model = keras.saving.load_model(str(path), compile=False, safe_mode=True)
    except ImportError:
        raise ValueError(INSTALL) from None
    except Exception as error:  # Keras's refusals: not a model, a Lambda layer, an unknown custom class
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "Lambda" in first:
            raise ValueError(
                f"{path} holds a Lambda layer, whose code Keras's safe mode will not run from a file; rebuild the "
                "model with built-in layers (or a registered custom layer) and save it again"
            ) from None
        raise ValueError(f"{path} does not load as a Keras model: {first}") from None
    if not _is_graph(model):
        raise ValueError(
            f"{path} holds a subclassed Keras model ({type(model).__name__}), whose layers cannot be run one by one; "
            "save a Functional or Sequential model"
        )
    if len(model.inputs) != 1:
        raise ValueError(f"the Keras model takes {len(model.inputs)} inputs; mindscope feeds one batch")
    module, carried = _wrap(model), _carried(model)
    if carried.get("layout") == "NCHW":  # data_format="channels_first": its maps are (N, C, H, W)
        module.layer_channel_axis = 1
    note = _expose_logits(model, module)
    if note is not None:
        carried["output"] = note  # build_card keeps it as the card's output_note
    return module, carried
