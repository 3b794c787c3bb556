"""init_gpt_: initialise a whole GPT with nanoGPT's recipe (or a per-layer variant) in one
normal_init_ launch per device.

Recognised by parameter names and module types, without importing any model library:
nanoGPT's GPT, our GPT, and HuggingFace's GPT2LMHeadModel / GPT2Model (Conv1D layers, the
same `c_attn` / `c_proj` / `c_fc` names). Each parameter's RNG stream id is a stable hash of
its name, so adding or removing a module leaves every other parameter's values unchanged,
and a tied parameter (wte / lm_head) is initialised once, under its first name.
"""
from __future__ import annotations

import fnmatch
import hashlib
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from nanogpt_kernels.ops.normal_init import normal_init_


@dataclass(frozen=True)
class Normal:
    """Rule target: N(mean, std)."""
    std: float
    mean: float = 0.0


@dataclass(frozen=True)
class Constant:
    """Rule target: every element equal to `value` (drawn with std 0, so it joins the launch)."""
    value: float


@dataclass
class ParamInit:
    name: str
    shape: tuple
    dtype: torch.dtype
    mean: float
    std: float
    stream_id: int
    why: str
    tied: list = field(default_factory=list)


class InitReport(list):
    """What init_gpt_ gave each parameter: a list of ParamInit that prints as a table."""

    def __str__(self):
        rows = [("parameter", "shape", "init", "why")]
        for p in self:
            init = f"constant {p.mean:g}" if p.std == 0 else f"normal({p.mean:g}, {p.std:.6g})"
            name = p.name + (f" (= {', '.join(p.tied)})" if p.tied else "")
            rows.append((name, "x".join(map(str, p.shape)), init, p.why))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def stream_id(name: str) -> int:
    """A stable 63-bit id for a parameter name (the same in every process and version)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 1


_LAYER = re.compile(r"(?:^|\.)h\.(\d+)\.")
_NORM_TYPES = ("LayerNorm", "RMSNorm")


def _n_layer(model: nn.Module, names) -> int:
    config = getattr(model, "config", None)
    for attr in ("n_layer", "num_hidden_layers"):
        if config is not None and isinstance(getattr(config, attr, None), int):
            return getattr(config, attr)
    layers = {int(m.group(1)) for n in names if (m := _LAYER.search(n))}
    return max(layers) + 1 if layers else 1


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rpartition(".")[0]) if "." in name else model


def init_gpt_(model: nn.Module, *, seed: int = 0, std: float = 0.02, residual: str = "gpt2",
              backend: str | None = None, rules=None) -> InitReport:
    """Initialise every parameter of a GPT in place and return what each received.

    residual: "gpt2" (nanoGPT: residual projections `c_proj.weight` at std / sqrt(2 * n_layer)),
    "depth" (those of layer l at std / sqrt(2 * (l + 1))) or "none" (every weight at std).
    Other weights (Linear, Conv1D, Embedding) get N(0, std), biases 0, norm weights 1.
    rules: [(pattern, Normal(std, mean) | Constant(value) | float std), ...] matched against
    parameter names with fnmatch before the recipe; the first match wins.
    """
    if residual not in ("gpt2", "depth", "none"):
        raise ValueError(f"residual must be 'gpt2', 'depth' or 'none', got {residual!r}")
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    rules = list(rules or [])
    for i, rule in enumerate(rules):
        if not (isinstance(rule, tuple) and len(rule) == 2 and isinstance(rule[0], str)
                and isinstance(rule[1], (Normal, Constant, int, float))):
            raise ValueError(f"rules[{i}] must be (name pattern, Normal(...) | Constant(...) | std), got {rule!r}")

    # remove_duplicate=False lists every name of a tied parameter; it is initialised once.
    first_name: dict[int, ParamInit] = {}
    report = InitReport()
    by_device: dict[torch.device, list] = {}
    params = list(model.named_parameters(remove_duplicate=False))
    n_layer = _n_layer(model, [n for n, _ in params])
    for name, p in params:
        if id(p) in first_name:
            first_name[id(p)].tied.append(name)
            continue
        mean, sd, why = _recipe(model, name, p, std, residual, n_layer, rules)
        entry = ParamInit(name, tuple(p.shape), p.dtype, mean, sd, stream_id(name), why)
        first_name[id(p)] = entry
        report.append(entry)
        by_device.setdefault(p.device, []).append((p, entry))

    for items in by_device.values():
        normal_init_([p for p, _ in items], [e.std for _, e in items], means=[e.mean for _, e in items],
                     stream_ids=[e.stream_id for _, e in items], seed=seed, backend=backend)
    return report


def _recipe(model, name, p, std, residual, n_layer, rules):
    """(mean, std, reason) for one parameter."""
    for pattern, target in rules:
        if fnmatch.fnmatchcase(name, pattern):
            if isinstance(target, Constant):
                return float(target.value), 0.0, f"rule {pattern!r}"
            if isinstance(target, Normal):
                return float(target.mean), float(target.std), f"rule {pattern!r}"
            return 0.0, float(target), f"rule {pattern!r}"
    owner = _owner(model, name)
    leaf = name.rpartition(".")[2]
    if any(t in type(owner).__name__ for t in _NORM_TYPES):
        return (1.0, 0.0, "norm weight") if leaf == "weight" else (0.0, 0.0, "norm bias")
    if leaf == "bias":
        return 0.0, 0.0, "bias"
    if name.endswith("c_proj.weight") and residual != "none":
        if residual == "gpt2":
            return 0.0, std / math.sqrt(2 * n_layer), f"residual projection: std/sqrt(2*{n_layer})"
        layer = _LAYER.search(name)
        depth = int(layer.group(1)) + 1 if layer else n_layer
        return 0.0, std / math.sqrt(2 * depth), f"residual projection of layer {depth - 1}: std/sqrt(2*{depth})"
    return 0.0, std, "weight"
