"""`python -m nanogpt_kernels demo`: train the same GPT from the same init on the same batches,
once with eager PyTorch and once with our fused kernels, and compare losses and speed.

Data (no download needed): by default a character-level corpus made of the Python standard
library's source files on this machine; `--data FILE` for any text file (character level);
`--data DIR` for nanoGPT's prepared `train.bin`/`val.bin` (uint16 token memmaps, with
`meta.pkl` for character-level data; otherwise GPT-2 BPE, decoded with tiktoken if installed).

On a GPU the model has GPT-2 124M's shapes (12 layers, 12 heads, 768 wide, block 1024) and
trains under bf16 autocast; the fused backend is, per op, the fastest one that runs ("cuda",
else "triton"). On the CPU the model is tiny and the kernels run emulated ("cuda": our CUDA
source through the CPU harness; "triton": Triton's interpreter). At these tiny shapes the
CUDA harness is about as fast as eager, so the fused run takes as many steps as the eager one;
Triton's interpreter is far slower, so when any op runs on it the fused run takes 6 steps
(--fused-steps sets it) and the losses are compared on the steps both ran. On the CPU the fused tokens/s measure the emulation, not the kernels, and the closing
sample from the fused model's weights is drawn with the eager backend (same weights,
set_backend in place).

Writes <out>/losses.csv (per-step losses and step times of both runs) and, when matplotlib
is installed, <out>/losses.png; prints a table, tokens/s, the speedup, MFU (GPU) and a sample.
"""
from __future__ import annotations

import argparse
import csv
import pathlib
import pickle
import sys
import sysconfig
import time
from contextlib import nullcontext

import torch

from nanogpt_kernels.model import GPT, GPTConfig, OPS

# Model and run defaults per device: the CPU's fit a couple of minutes in all.
DEFAULTS = {
    # fused_steps None: all of them when every op runs on the CUDA harness (about as fast as
    # eager at this size), TRITON_CPU_STEPS when some op needs Triton's interpreter (far slower).
    "cpu": dict(n_layer=2, n_head=2, n_embd=64, block_size=64, batch_size=8, steps=60, fused_steps=None, lr=2e-3,
                sample_tokens=300),
    "cuda": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, steps=60, fused_steps=60,
                 lr=6e-4, sample_tokens=500),
}
TRITON_CPU_STEPS = 6
CORPUS_CHARS = 2_000_000  # about 2 MB of the standard library's source


# --------------------------------------------------------------------------------------------
# Data


class Data:
    """Token streams (train, val), vocab size and a decoder."""

    def __init__(self, train, val, vocab_size, decode, description):
        self.train, self.val, self.vocab_size, self.decode = train, val, vocab_size, decode
        self.description = description

    def batch(self, split, batch_size, block_size, gen, device):
        data = self.train if split == "train" else self.val
        ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=gen).tolist()
        x = torch.stack([_as_tensor(data[i:i + block_size]) for i in ix])
        y = torch.stack([_as_tensor(data[i + 1:i + 1 + block_size]) for i in ix])
        if device.type == "cuda":
            return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        return x.to(device), y.to(device)


def _as_tensor(a):
    if isinstance(a, torch.Tensor):
        return a.long()
    import numpy as np  # only for nanoGPT's .bin memmaps, which need numpy anyway

    return torch.from_numpy(np.asarray(a, dtype=np.int64))


def _char_data(text: str, description: str) -> Data:
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.int16 if len(chars) < 2 ** 15 else torch.int32)
    n = int(0.9 * len(ids))
    return Data(ids[:n], ids[n:], len(chars), lambda t: "".join(chars[i] for i in t),
                f"{description}: {len(text):,} characters, vocab {len(chars)}")


def stdlib_corpus(max_chars: int = CORPUS_CHARS) -> str:
    """The Python standard library's .py sources, in a fixed order, printable ASCII only."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        text = "".join(c if (" " <= c <= "~" or c == "\n") else "?" for c in text)
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    if total < 10_000:
        raise RuntimeError(f"found only {total} characters of Python sources under {root}; use --data FILE")
    return "".join(parts)[:max_chars]


def load_data(spec: str | None) -> Data:
    if spec is None:
        return _char_data(stdlib_corpus(), f"Python standard library sources ({sysconfig.get_paths()['stdlib']})")
    path = pathlib.Path(spec)
    if path.is_dir():
        import numpy as np

        train = np.memmap(path / "train.bin", dtype=np.uint16, mode="r")
        val = np.memmap(path / "val.bin", dtype=np.uint16, mode="r")
        meta = path / "meta.pkl"
        if meta.exists():
            with open(meta, "rb") as f:
                m = pickle.load(f)
            itos = m.get("itos")
            decode = (lambda t: "".join(itos[i] for i in t)) if itos else (lambda t: " ".join(map(str, t)))
            return Data(train, val, m["vocab_size"], decode, f"{path}: {len(train):,} train tokens, "
                        f"vocab {m['vocab_size']} (meta.pkl)")
        try:
            import tiktoken

            enc = tiktoken.get_encoding("gpt2")
            decode = enc.decode
        except ImportError:
            decode = lambda t: " ".join(map(str, t))  # noqa: E731
        return Data(train, val, 50304, decode, f"{path}: {len(train):,} train tokens, GPT-2 BPE (vocab 50304)")
    return _char_data(path.read_text(encoding="utf-8", errors="replace"), str(path))


# --------------------------------------------------------------------------------------------
# Backend choice


def _probe(op: str, backend: str, device: torch.device, head_dim: int) -> str | None:
    """None when `op` runs (forward and backward) on `backend`, else why not."""
    import nanogpt_kernels as nk

    try:
        g = torch.Generator().manual_seed(0)
        if op == "layernorm":
            x = torch.randn(3, 64, generator=g).to(device).requires_grad_()
            w = torch.ones(64, device=device, requires_grad=True)
            s, y = nk.add_layer_norm(x, x, w, None, backend=backend)
            (s.sum() + y.sum()).backward()
        elif op == "attention":
            q = torch.randn(1, 1, 5, head_dim, generator=g).to(device).requires_grad_()
            nk.causal_attention(q, q, q, backend=backend).sum().backward()
        else:
            x = torch.randn(3, 16, generator=g).to(device).requires_grad_()
            w1 = torch.randn(64, 16, generator=g).to(device).requires_grad_()
            w2 = torch.randn(16, 64, generator=g).to(device).requires_grad_()
            nk.gelu_mlp(x, w1, None, w2, None, backend=backend).sum().backward()
        return None
    except Exception as e:  # any failure means: not this one
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"


def choose_backend(device: torch.device, head_dim: int, wanted: str) -> tuple[dict, list]:
    """Per op, the first of ("cuda", "triton") that runs here (or only `wanted`)."""
    candidates = ("cuda", "triton") if wanted == "auto" else (wanted,)
    chosen, why = {}, []
    for op in OPS:
        for backend in candidates:
            reason = _probe(op, backend, device, head_dim)
            if reason is None:
                chosen[op] = backend
                break
            why.append(f"{op} on {backend}: {reason}")
        else:
            chosen[op] = "eager"
    return chosen, why


# --------------------------------------------------------------------------------------------
# Training


def _progress(total, desc, enabled):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stdout)
        except ImportError:
            pass
    return None


def train(label, config, data, args, device, steps, seed):
    """Per-step (loss, seconds) of `steps` AdamW steps; the trained model. The learning-rate
    schedule depends on --steps only, so a shorter fused run follows the eager run's."""
    torch.manual_seed(seed)
    model = GPT(config, seed=seed).to(device)
    opt = model.configure_optimizers(0.1, args.lr, (0.9, 0.99), device.type, verbose=False)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    gen = torch.Generator().manual_seed(seed + 1)  # the same batches for both runs
    bar = _progress(steps, label, not args.no_progress)
    losses, times = [], []
    for step in range(steps):
        lr = args.lr * min(1.0, (step + 1) / max(1, args.steps // 10))  # short linear warmup
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = data.batch("train", args.batch_size, config.block_size, gen, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with autocast:
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        value = loss.item()  # synchronises
        times.append(time.perf_counter() - start)
        losses.append(value)
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4f}")
            bar.update()
        elif step % max(1, steps // 10) == 0 or step == steps - 1:
            print(f"  {label}: step {step + 1}/{steps} loss {value:.4f} ({times[-1] * 1e3:.0f} ms)", flush=True)
    if bar is not None:
        bar.close()
    return losses, times, model


def tokens_per_s(times, tokens_per_step):
    timed = times[2:] if len(times) > 4 else times[1:] or times  # skip warmup (autotuning, JIT)
    return tokens_per_step * len(timed) / sum(timed)


def write_outputs(out, eager, fused, label):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "losses.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "eager_loss", "fused_loss", "eager_step_ms", "fused_step_ms"])
        for i in range(max(len(eager[0]), len(fused[0]))):
            row = [i + 1]
            for losses, _ in (eager, fused):
                row.append(f"{losses[i]:.6f}" if i < len(losses) else "")
            for _, times in (eager, fused):
                row.append(f"{times[i] * 1e3:.3f}" if i < len(times) else "")
            w.writerow(row)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "plot skipped: matplotlib is not installed (pip install matplotlib)"
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(eager[0]) + 1), eager[0], label="eager PyTorch")
    ax.plot(range(1, len(fused[0]) + 1), fused[0], "--", label=f"fused ({label})")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "losses.png", dpi=120)
    plt.close(fig)
    return f"wrote {out / 'losses.png'}"


def run(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    d = DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    for key, value in d.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n_embd % args.n_head:
        print(f"error: --n-embd {args.n_embd} must be a multiple of --n-head {args.n_head}", file=sys.stderr)
        return 2
    data = load_data(args.data)
    config = GPTConfig(block_size=args.block_size, vocab_size=data.vocab_size, n_layer=args.n_layer,
                       n_head=args.n_head, n_embd=args.n_embd, dropout=0.0, bias=True, backend="eager")
    head_dim = args.n_embd // args.n_head
    backend, why = choose_backend(device, head_dim, args.backend)
    label = "+".join(sorted(set(backend.values()))) if len(set(backend.values())) == 1 else \
        ", ".join(f"{op}={b}" for op, b in backend.items())
    emulated = device.type == "cpu"
    if args.fused_steps is None:
        args.fused_steps = TRITON_CPU_STEPS if "triton" in backend.values() else args.steps
    args.fused_steps = min(args.fused_steps, args.steps)
    print(f"nanogpt_kernels demo on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}")
    print(f"data: {data.description}")
    print(f"model: {args.n_layer} layers, {args.n_head} heads, {args.n_embd} wide, block {args.block_size}, "
          f"batch {args.batch_size}" + (", bf16 autocast" if device.type == "cuda" else ""))
    how = {"cuda": "cuda = our CUDA source on the CPU harness", "triton": "triton = Triton's interpreter"}
    used = [how[b] for b in ("cuda", "triton") if b in backend.values()]
    print(f"fused backend: {label}" + (f" (emulated on the CPU: {'; '.join(used)})" if emulated and used else ""))
    for line in why:
        print(f"  not used: {line}")
    print(f"steps: eager {args.steps}, fused {args.fused_steps}")

    eager = train("eager", config, data, args, device, args.steps, args.seed)
    fused_config = GPTConfig(**{**config.__dict__, "backend": backend})
    fused = train(f"fused ({label})", fused_config, data, args, device, args.fused_steps, args.seed)
    model = fused[2]

    # Per-step losses on the steps both ran.
    common = min(len(eager[0]), len(fused[0]))
    print(f"\n{'step':>5} {'eager loss':>11} {'fused loss':>11} {'|diff|':>9}")
    shown = range(common) if common <= 30 else sorted(set(range(0, common, max(1, common // 20))) | {common - 1})
    for i in shown:
        print(f"{i + 1:>5} {eager[0][i]:>11.4f} {fused[0][i]:>11.4f} {abs(eager[0][i] - fused[0][i]):>9.2e}")
    worst = max(abs(a - b) / abs(a) for a, b in zip(eager[0][:common], fused[0][:common]))
    print(f"max relative loss difference over {common} steps: {worst:.2e}")
    if len(eager[0]) > common:
        print(f"eager continued to step {len(eager[0])}: loss {eager[0][-1]:.4f}")

    tokens = args.batch_size * args.block_size
    eager_tps, fused_tps = tokens_per_s(eager[1], tokens), tokens_per_s(fused[1], tokens)
    print(f"\ntokens/s: eager {eager_tps:,.0f}, fused {fused_tps:,.0f}, speedup {fused_tps / eager_tps:.2f}x"
          + (" (CPU: the fused kernels are emulated; this is not their speed)" if emulated else ""))
    if device.type == "cuda":
        for name, (_, times, m) in (("eager", eager), ("fused", fused)):
            dt = sum(times[2:]) / max(1, len(times[2:]))
            print(f"MFU {name}: {100 * m.estimate_mfu(args.batch_size, dt):.1f}%")
    out = pathlib.Path(args.out)
    plot = write_outputs(out, eager[:2], fused[:2], label)
    print(f"wrote {out / 'losses.csv'}; {plot}")

    if args.sample_tokens > 0:
        model.eval()
        if emulated:
            model.set_backend("eager")  # same weights; the emulated kernels would take minutes to sample
        start = torch.tensor([[0]], dtype=torch.long, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext():
            out_ids = model.generate(start, args.sample_tokens, temperature=0.8, top_k=50,
                                     generator=torch.Generator(device).manual_seed(args.seed))
        print(f"\nsample from the fused model{' (drawn with the eager backend)' if emulated else ''}:\n"
              + "-" * 60 + f"\n{data.decode(out_ids[0].tolist())}\n" + "-" * 60)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    cpu, gpu = DEFAULTS["cpu"], DEFAULTS["cuda"]

    def both(key):
        return f"(default: {cpu[key]} on CPU, {gpu[key]} on GPU)"

    p.add_argument("--data", default=None, help="a text file (character level) or a directory with nanoGPT's "
                   "train.bin/val.bin (default: the Python standard library's sources, character level)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--backend", default="auto", choices=["auto", "cuda", "triton"],
                   help="fused backend: auto = per op the first of cuda, triton that runs here")
    p.add_argument("--steps", type=int, default=None, help=f"eager training steps {both('steps')}")
    p.add_argument("--fused-steps", type=int, default=None,
                   help="fused training steps (default: as many as --steps; on CPU 6 when an op runs in Triton's "
                   "interpreter)")
    p.add_argument("--n-layer", type=int, default=None, help=f"{both('n_layer')}")
    p.add_argument("--n-head", type=int, default=None, help=f"{both('n_head')}")
    p.add_argument("--n-embd", type=int, default=None, help=f"{both('n_embd')}")
    p.add_argument("--block-size", type=int, default=None, help=f"{both('block_size')}")
    p.add_argument("--batch-size", type=int, default=None, help=f"{both('batch_size')}")
    p.add_argument("--lr", type=float, default=None, help=f"AdamW learning rate {both('lr')}")
    p.add_argument("--sample-tokens", type=int, default=None,
                   help=f"tokens to sample at the end {both('sample_tokens')}")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--out", default="out/demo", help="directory for losses.csv and losses.png (default: out/demo)")
    p.add_argument("--no-progress", action="store_true", help="plain progress lines instead of tqdm bars")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanogpt_kernels demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
