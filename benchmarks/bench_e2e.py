"""End to end: one GPT-2 training step (forward, backward, AdamW step) of 124M and 350M at
B=12, T=1024 under bf16 autocast, in tokens/s and MFU, for nanoGPT-equivalent eager PyTorch,
eager + torch.compile, our fused model on each backend, and fused + torch.compile.

    python -m benchmarks.bench_e2e [--models 124M 350M] [--batch 12] [--seq 1024] [--steps 10]
                                   [--quick] [--out results.json]

The model is nanogpt_kernels.GPT / GPTConfig (the reference GPT with a `backend` argument:
"eager" is nanoGPT's math, "triton" / "cuda" our fused kernels); every provider starts from the
same weights (the eager model's state dict) and the same batch. Validation before timing: the
first step's loss must be within 0.5% of eager's under bf16 autocast (1e-4 relative in float32
on the CPU). MFU follows nanoGPT's estimate_mfu: 6 N + 12 L H Q T FLOPs per token (N the
non-embedding parameters), against the datasheet's bf16 dense peak (benchmarks/gpus.py) and
against the bf16 GEMM peak measured at start-up. The formula counts attention as
non-causal (every query against all T keys), twice the FLOPs a causal kernel does: figures
stay comparable with nanoGPT's and PaLM's MFU, and are higher than the work really done. Without a GPU a tiny model runs
on the CPU in float32 (smoke mode, not GPU figures).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import time

import torch

from .common import Case, NotMeasured, Settings, Skip, device_banner, run_cases, short, write_results
from .roofline import datasheet_peaks, measure_peaks

OPS = ("gpt2_train_step",)
# GPT-2 family: nanoGPT's vocab of 50304 (50257 padded) and block size 1024, no dropout.
CONFIGS = {"124M": dict(n_layer=12, n_head=12, n_embd=768), "350M": dict(n_layer=24, n_head=16, n_embd=1024)}
SMOKE_CONFIG = dict(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=128)
COMMON = dict(block_size=1024, vocab_size=50304, dropout=0.0, bias=True)


def model_api():
    """(GPT, GPTConfig) of nanogpt_kernels, or a Skip saying why they cannot be had."""
    try:
        import nanogpt_kernels as nk

        if hasattr(nk, "GPT") and hasattr(nk, "GPTConfig"):
            return nk.GPT, nk.GPTConfig
        from nanogpt_kernels.model import GPT, GPTConfig
        return GPT, GPTConfig
    except Exception as e:
        return Skip(f"nanogpt_kernels.GPT / GPTConfig unavailable ({short(e)})")


def _parameters_of(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    return set(inspect.signature(cls).parameters)


def build(api, config: dict, backend: str, device):
    """A GPT for `config` running its ops on `backend`, whichever way the API takes the backend
    (a GPTConfig field or a GPT argument)."""
    GPT, GPTConfig = api
    fields = _parameters_of(GPTConfig)
    kwargs = {k: v for k, v in config.items() if k in fields}
    if "backend" in fields:
        model = GPT(GPTConfig(**kwargs, backend=backend))
    elif "backend" in inspect.signature(GPT).parameters:
        model = GPT(GPTConfig(**kwargs), backend=backend)
    elif backend == "eager":
        model = GPT(GPTConfig(**kwargs))
    else:
        raise TypeError("neither GPTConfig nor GPT takes a `backend`")
    return model.to(device)


def _loss(out):
    """nanoGPT's forward returns (logits, loss); accept a bare loss too."""
    if isinstance(out, (tuple, list)):
        return next(t for t in reversed(out) if torch.is_tensor(t) and t.dim() == 0)
    return out


def flops_per_token(model, config: dict, T: int) -> float:
    """nanoGPT's estimate_mfu: 6 N + 12 L H Q T, N without the position embedding."""
    n = sum(p.numel() for p in model.parameters())
    wpe = dict(model.named_parameters()).get("transformer.wpe.weight")
    if wpe is not None:
        n -= wpe.numel()
    L, H, Q = config["n_layer"], config["n_head"], config["n_embd"] // config["n_head"]
    return 6 * n + 12 * L * H * Q * T


def providers(settings: Settings, api) -> dict:
    """name -> (backend, compiled) or Skip."""
    gpu = settings.device.type == "cuda"
    if isinstance(api, Skip):
        return {name: api for name in ("eager", "eager+compile", "fused-triton", "fused-cuda",
                                       "fused-triton+compile", "fused-cuda+compile")}
    from .common import backend_unavailable

    why = {b: backend_unavailable(b, settings.device) for b in ("triton", "cuda")}
    available = [b for b, reason in why.items() if reason is None]
    best = "cuda" if "cuda" in available else "triton"
    out = {"eager": ("eager", False),
           "eager+compile": ("eager", True) if gpu else Skip("torch.compile: GPU only")}
    for backend in ("triton", "cuda"):
        missing = None if backend in available else Skip(f"backend {backend!r} unavailable: {why[backend]}")
        if missing is None and backend == "triton" and not gpu:
            missing = Skip("Triton's interpreter is too slow for a training step on the CPU (smoke run); "
                           "fused-cuda exercises the same path")
        out[f"fused-{backend}"] = missing or (backend, False)
    for backend in ("triton", "cuda"):
        name = f"fused-{backend}+compile"
        if not gpu:
            out[name] = Skip("torch.compile: GPU only")
        elif backend not in available:
            out[name] = Skip(f"backend {backend!r} unavailable: {why[backend]}")
        elif settings.quick and backend != best:
            out[name] = Skip(f"--quick compiles the default backend only ({best})")
        else:
            out[name] = (backend, True)
    return out


def _batch(case: Case, device):
    g = torch.Generator().manual_seed(0)
    vocab, (B, T) = case.extra["config"]["vocab_size"], (case.shape["B"], case.shape["T"])
    return tuple(torch.randint(vocab, (B, T), generator=g).to(device) for _ in range(2))


def _make_step(case: Case, backend: str, compiled: bool, settings: Settings):
    """A training step of a fresh model on `backend` with the case's common weights, and its first loss."""
    device, config = settings.device, case.extra["config"]
    if compiled:
        torch._dynamo.reset()
    torch.manual_seed(0)
    model = build(case.extra["api"], config, backend, device)
    if "state" not in case.cache:  # the first model built gives every other its weights
        case.cache["state"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        case.cache["flops_per_token"] = flops_per_token(model, config, case.shape["T"])
    else:
        model.load_state_dict(case.cache["state"])
    model.train()
    run = torch.compile(model) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **({"fused": True} if device.type == "cuda" else {}))
    x, y = _batch(case, device)
    autocast = torch.autocast("cuda", torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = _loss(run(x, y))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, step().item()  # the first step (it compiles, when compiled) gives the loss to validate


def _prepare(case: Case, provider: str, settings: Settings) -> dict:
    """Validation: the first step's loss within 0.5% of eager's (bf16 autocast; 1e-4 in float32)."""
    backend, compiled = case.providers[provider]
    try:
        if "eager_loss" not in case.cache:
            if provider == "eager":
                step, loss = _make_step(case, "eager", False, settings)
                case.cache["eager_loss"] = loss
                return {"step": step}
            case.cache["eager_loss"] = _make_step(case, "eager", False, settings)[1]
        step, loss = _make_step(case, backend, compiled, settings)
    except Exception as e:  # a failing provider is a record, never the end of the run
        raise NotMeasured("error", short(e)) from e
    eager = case.cache["eager_loss"]
    tol = (5e-3 if settings.device.type == "cuda" else 1e-4) * abs(eager)
    if not abs(loss - eager) <= tol:
        raise NotMeasured("invalid", f"first-step loss {loss:.6g}, eager {eager:.6g} (tolerance {tol:.3g})")
    return {"step": step}


def _timer(case: Case):
    def timer(step, device, reps_ms):
        """Median of `steps` timed steps after `warmup` ones (CUDA events on a GPU: a training
        step is long enough for host overhead not to matter), peak memory, and the timer."""
        for _ in range(case.extra["warmup"]):
            step()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(case.extra["steps"]):
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3)
            else:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
        return sorted(times)[len(times) // 2], peak, "cuda events" if device.type == "cuda" else "cpu wall clock"
    return timer


def _metrics(case: Case, row: dict, seconds: float, settings: Settings) -> dict:
    tokens = case.shape["B"] * case.shape["T"]
    flops = case.cache["flops_per_token"] * tokens
    achieved = flops / seconds
    datasheet = datasheet_peaks(torch.cuda.get_device_name() if settings.device.type == "cuda" else None)
    return {"flops": flops, "TFLOP/s": achieved / 1e12, "tokens/s": tokens / seconds,
            "MFU": achieved / datasheet["flops"] if datasheet else None,
            "MFU_measured": achieved / settings.peaks["flops"] if settings.peaks else None}


def _cleanup(case: Case, provider: str) -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def cases(settings: Settings, models=None, batch=None, seq=None, steps=None) -> list[Case]:
    api = model_api()
    if settings.smoke:
        chosen = {"tiny": SMOKE_CONFIG}
        B, T, steps, warmup = batch or 2, seq or 16, steps or 1, 0
    else:
        names = models or (["124M"] if settings.quick else list(CONFIGS))
        chosen = {n: {**COMMON, **CONFIGS[n]} for n in names}
        B, T = batch or 12, seq or 1024
        steps, warmup = steps or (5 if settings.quick else 10), 2 if settings.quick else 3
    out = []
    for name, config in chosen.items():
        config = {**config, "dropout": 0.0, "bias": True}
        case = Case(op="gpt2_train_step", shape={"model": name, "B": B, "T": T}, size=B * T,
                    size_name="tokens per step", dtype=torch.bfloat16 if not settings.smoke else torch.float32,
                    flops={}, bytes={}, metric="tokens/s", providers=providers(settings, api), modes=("step",),
                    prepare=_prepare, metrics=_metrics, cleanup=_cleanup,
                    extra={"config": config, "steps": steps, "warmup": warmup, "api": api})
        case.timer = _timer(case)
        out.append(case)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=None, choices=list(CONFIGS))
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="timed steps (median reported)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=None, help="write results as JSON here")
    args = p.parse_args(argv)
    settings = Settings.detect(quick=args.quick)
    settings.peaks = measure_peaks(settings.device, quick=args.quick)
    print(device_banner(settings.device))
    records = run_cases(cases(settings, args.models, args.batch, args.seq, args.steps), settings)
    if args.out:
        write_results(args.out, records, settings.smoke, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
