"""Names for the modules of converted models: valid, unique submodule names and classes named after the original.

`describe_layers` shows each module's class name; a wrapped or converted layer therefore
gets an empty subclass named after what it stands for (`Conv2d`, `Dense`, `Reshape`), so a
listing reads as for the original network. Behaviour is the base class's.
"""

from __future__ import annotations

import re

from torch import nn

__all__ = ["module_name", "named_class"]


def module_name(name: str, fallback: str, taken: set[str]) -> str:
    """Turn any layer or node name into a unique, valid submodule name, and remember it in `taken`.

    Every character outside [A-Za-z0-9_] becomes "_" and leading or trailing "_" go
    ("/features/features.0/Conv" -> "features_features_0_Conv"); an empty result is
    `fallback`; a name already taken, or one that `nn.Module` itself uses, gets "_2", "_3", ...
    """
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_") or fallback
    if clean in taken or clean == "training" or hasattr(nn.Module, clean):
        n = 2
        while f"{clean}_{n}" in taken:
            n += 1
        clean = f"{clean}_{n}"
    taken.add(clean)
    return clean


def named_class(base: type, name: str) -> type:
    """An empty subclass of `base` called `name` (the class a listing should show)."""
    return type(name, (base,), {"__module__": base.__module__, "__qualname__": name})
