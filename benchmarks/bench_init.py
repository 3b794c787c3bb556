"""Initialising a whole GPT: init_gpt_ (one launch) against nanoGPT's
`model.apply(_init_weights)` plus its c_proj loop, and against a per-tensor torch.nn.init loop.

    python -m benchmarks.bench_init [--models 124M 350M 774M 1558M] [--dtype float32] [--out results.json]

Runs on the GPU when there is one, else on the CPU (our multithreaded C++ path; these CPU
figures are real CPU measurements, not GPU ones). Reports seconds, GB/s written and the
speedup over nanoGPT's loop. Each run is checked first: init_gpt_ must equal the eager
reference bit for bit on a small model, and every method's c_proj std must follow the recipe.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import time

import torch
from torch import nn

import nanogpt_kernels as nk
from .common import Case, NotMeasured, Settings, backend_or_skip, short
from .roofline import normal_init_bytes

OPS = ("normal_init",)

# GPT-2 family (n_layer, n_head, n_embd), nanoGPT's vocab of 50304 and block size 1024.
CONFIGS = {"124M": (12, 12, 768), "350M": (24, 16, 1024), "774M": (36, 20, 1280), "1558M": (48, 25, 1600)}


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.mlp = nn.Module(), nn.Module()
        self.attn.c_attn, self.attn.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp.c_fc, self.mlp.c_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)


class GPT(nn.Module):
    """nanoGPT's module tree and parameter names (the part init cares about)."""

    def __init__(self, n_layer, d, vocab=50304, block_size=1024):
        super().__init__()
        self.n_layer = n_layer
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab, d), wpe=nn.Embedding(block_size, d),
            h=nn.ModuleList([Block(d) for _ in range(n_layer)]), ln_f=nn.LayerNorm(d)))
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.transformer.wte.weight = self.lm_head.weight


def build(name, device, dtype):
    n_layer, _, d = CONFIGS[name]
    with torch.device("meta"):
        model = GPT(n_layer, d)
    # to_empty allocates without running nn.Linear's own (slow) initialisation.
    return model.to_empty(device=device).to(dtype)


def nanogpt_init(model):
    """nanoGPT's GPT.__init__: apply(_init_weights), then the c_proj loop."""
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    model.apply(_init_weights)
    for pn, p in model.named_parameters():
        if pn.endswith("c_proj.weight"):
            torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * model.n_layer))


def per_tensor_init(model):
    """The plain loop: one torch.nn.init call per parameter."""
    with torch.no_grad():
        for pn, p in model.named_parameters():
            if p.dim() == 1:
                (torch.nn.init.ones_ if pn.endswith("ln_1.weight") or pn.endswith("ln_2.weight")
                 or pn.endswith("ln_f.weight") else torch.nn.init.zeros_)(p)
            else:
                std = 0.02 / math.sqrt(2 * model.n_layer) if pn.endswith("c_proj.weight") else 0.02
                torch.nn.init.normal_(p, 0.0, std)


def timed(fn, device, reps):
    fn()  # warm-up (and Triton/extension loading)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def validate(device):
    small = GPT(2, 64, vocab=300, block_size=32).to(device)
    reference = GPT(2, 64, vocab=300, block_size=32).to(device)
    nk.init_gpt_(small, seed=0)
    nk.init_gpt_(reference, seed=0, backend="eager")
    for (name, a), b in zip(small.state_dict().items(), reference.state_dict().values()):
        if not torch.equal(a, b):
            raise SystemExit(f"init_gpt_ differs from the eager reference at {name}")


def validate_backend(device, backend) -> str | None:
    """None when init_gpt_ on `backend` gives the eager generator's bits on a small model, else why not."""
    small = GPT(2, 64, vocab=300, block_size=32).to(device)
    reference = GPT(2, 64, vocab=300, block_size=32).to(device)
    nk.init_gpt_(small, seed=0, backend=backend)
    nk.init_gpt_(reference, seed=0, backend="eager")
    for (name, a), b in zip(small.state_dict().items(), reference.state_dict().values()):
        if not torch.equal(a, b):
            return f"differs from the eager generator at {name}"
    return None


def _suite_providers(device):
    """The suite's providers of whole-model init: name -> init(model) or Skip."""
    out = {"nanoGPT loop": nanogpt_init, "per-tensor loop": per_tensor_init,
           "eager": lambda m: nk.init_gpt_(m, seed=0, backend="eager")}
    for backend in ("triton", "cuda"):
        out[backend] = backend_or_skip(backend, device, lambda be: lambda m: nk.init_gpt_(m, seed=0, backend=be))
    if device.type == "cpu":  # the default CPU path: our multithreaded C++ generator
        out["c++ cpu"] = lambda m: nk.init_gpt_(m, seed=0)
    return out


def _prepare(case: Case, provider: str, settings: Settings) -> dict:
    """Ours (init_gpt_ on a backend) must give the eager generator's bits on a small model; the
    model to time is built once per case."""
    fn = case.providers[provider]
    try:
        if provider in ("triton", "cuda", "c++ cpu"):
            problem = validate_backend(settings.device, None if provider == "c++ cpu" else provider)
            if problem:
                raise NotMeasured("invalid", problem)
        if "model" not in case.cache:
            name = case.shape["model"]
            case.cache["model"] = (build(name, settings.device, case.dtype) if name in CONFIGS
                                   else GPT(*TINY[:2], **TINY[2]).to(settings.device, case.dtype))
        model = case.cache["model"]
        fn(model)
    except NotMeasured:
        raise
    except Exception as e:  # a failing provider is a record, never the end of the run
        raise NotMeasured("error", short(e)) from e
    return {"fwd": lambda: fn(model)}


TINY = (2, 64, {"vocab": 512, "block_size": 64})


def cases(settings: Settings, models=None) -> list[Case]:
    """One case per model: the whole-model init as one "fwd" measurement, in GB/s written."""
    dtype = torch.float32
    models = models or (["tiny"] if settings.smoke else (["124M", "350M"] if settings.quick else list(CONFIGS)))
    out = []
    for name in models:
        with torch.device("meta"):
            model = GPT(CONFIGS[name][0], CONFIGS[name][2]) if name in CONFIGS else GPT(*TINY[:2], **TINY[2])
        numel = sum(p.numel() for p in model.parameters())
        out.append(Case(op="normal_init", shape={"model": name, "params": numel}, size=numel,
                        size_name="parameters", dtype=dtype, flops={},
                        bytes={"fwd": normal_init_bytes(numel, torch.tensor([], dtype=dtype).element_size())},
                        metric="GB/s", providers=_suite_providers(settings.device), modes=("fwd",), prepare=_prepare))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, choices=list(CONFIGS))
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    models = args.models or (list(CONFIGS) if device.type == "cuda" else ["124M"])
    dtype = getattr(torch, args.dtype)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}")
    validate(device)
    results = []
    for name in models:
        model = build(name, device, dtype)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        row = {"model": name, "params": sum(p.numel() for p in model.parameters()), "dtype": args.dtype}
        for method, fn in (("nanoGPT apply + c_proj loop", lambda: nanogpt_init(model)),
                           ("per-tensor torch.nn.init", lambda: per_tensor_init(model)),
                           ("nanogpt_kernels.init_gpt_", lambda: nk.init_gpt_(model, seed=0))):
            seconds = timed(fn, device, args.reps)
            row[method] = seconds
            print(f"{name:>6} {method:<28} {seconds * 1e3:10.1f} ms  {nbytes / seconds / 1e9:7.2f} GB/s")
        row["speedup_vs_nanogpt"] = row["nanoGPT apply + c_proj loop"] / row["nanogpt_kernels.init_gpt_"]
        print(f"{name:>6} speedup of init_gpt_ over nanoGPT's loop: {row['speedup_vs_nanogpt']:.1f}x")
        results.append(row)
        del model
    if args.out:
        meta = {"device": where, "torch": torch.__version__, "nanogpt_kernels": nk.__version__,
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
