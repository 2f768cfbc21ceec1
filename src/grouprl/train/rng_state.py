"""Capture and restore random-number-generator states for exact resume.

Global RNGs: python ``random``, numpy's global ``RandomState``, torch's CPU generator and, when
CUDA is already initialised (never initialised here), every CUDA device's generator. Named
generators: ``torch.Generator`` (any device), numpy ``Generator`` / ``RandomState`` and
``random.Random``. A captured state is plain data (tuples, dicts, ints, CPU byte tensors, numpy
arrays), so it can be written with ``torch.save`` and read back with
``torch.load(weights_only=True)`` (see :mod:`grouprl.train.safe_io`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Generatorish", "capture_rng_state", "check_generators", "restore_rng_state"]

Generatorish = torch.Generator | np.random.Generator | np.random.RandomState | random.Random

_KINDS = ((torch.Generator, "torch"), (np.random.Generator, "numpy"),
          (np.random.RandomState, "numpy_legacy"), (random.Random, "python"))


def _kind(gen: object) -> str | None:
    return next((kind for cls, kind in _KINDS if isinstance(gen, cls)), None)


def _generator_state(name: str, gen: Generatorish) -> dict[str, Any]:
    kind = _kind(gen)
    if kind == "torch":
        return {"type": kind, "device": str(gen.device), "state": gen.get_state()}
    if kind == "numpy":
        return {"type": kind, "state": gen.bit_generator.state}
    if kind == "numpy_legacy":
        return {"type": kind, "state": gen.get_state()}
    if kind == "python":
        return {"type": kind, "state": gen.getstate()}
    raise TypeError(f"generators[{name!r}]: unsupported type {type(gen).__name__}; expected "
                    "torch.Generator, numpy.random.Generator/RandomState or random.Random")


def capture_rng_state(generators: Mapping[str, Generatorish] | None = None) -> dict[str, Any]:
    """``{"python", "numpy", "torch", "cuda", "generators": {name: {"type", "state", ...}}}``."""
    named = {}
    for name, gen in (generators or {}).items():
        if not isinstance(name, str):
            raise TypeError(f"generators: names must be strings, got {name!r}")
        named[name] = _generator_state(name, gen)
    cuda = []
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    return {"python": random.getstate(), "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(), "cuda": cuda, "generators": named}


def check_generators(source: Path, captured: Mapping[str, Any],
                     generators: Mapping[str, Generatorish]) -> None:
    """Every generator in ``generators`` was captured under its name with the same kind, and a
    torch one on the same device type (``KeyError`` / ``TypeError`` / ``ValueError`` otherwise);
    call before :func:`restore_rng_state`."""
    saved = captured["generators"]
    for name, gen in generators.items():
        if name not in saved:
            raise KeyError(f"generators: checkpoint {source} has no generator named {name!r}; "
                           f"saved: {sorted(saved)}")
        kind = saved[name]["type"]
        if _kind(gen) != kind:
            raise TypeError(f"generators[{name!r}]: checkpoint holds a {kind} generator state, "
                            f"got {type(gen).__name__}")
        if kind == "torch" and torch.device(saved[name]["device"]).type != gen.device.type:
            raise ValueError(f"generators[{name!r}]: checkpoint {source} holds the state of a "
                             f"{saved[name]['device']} generator, got one on {gen.device}; a "
                             "generator's state cannot move between device types: resume on "
                             "the device the run was saved on")


def restore_rng_state(captured: Mapping[str, Any], generators: Mapping[str, Generatorish],
                restore_global: bool) -> None:
    """Set the named ``generators`` (checked with :func:`check_generators`) and, when
    ``restore_global``, the global RNGs (CUDA ones for the devices present) to ``captured``."""
    if restore_global:
        torch.set_rng_state(captured["torch"])
        if captured["cuda"] and torch.cuda.is_available():
            for i, s in enumerate(captured["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
        random.setstate(captured["python"])
        np.random.set_state(captured["numpy"])
    for name, gen in generators.items():
        entry = captured["generators"][name]
        kind = entry["type"]
        if kind == "torch":
            gen.set_state(entry["state"])
        elif kind == "numpy":
            gen.bit_generator.state = entry["state"]
        elif kind == "numpy_legacy":
            gen.set_state(entry["state"])
        else:
            gen.setstate(entry["state"])
