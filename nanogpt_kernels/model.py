"""The reference GPT: nanoGPT's model.py (module tree, parameter names, init recipe, forward,
generate, crop_block_size, configure_optimizers, estimate_mfu) on our modules, switchable
between eager PyTorch and our kernels, for all ops or per op.

A nanoGPT checkpoint's `model` state_dict loads unchanged (`wte` is tied to `lm_head`, as in
nanoGPT; the causal-mask buffers of nanoGPT's non-flash attention are accepted and dropped).
With backend "eager" the math is nanoGPT's, op for op. With a kernel backend for LayerNorm,
each residual add is fused with the LayerNorm that follows it (`add_layer_norm`): one pass
gives both the new residual stream and the next LayerNorm's output, across blocks and into
`ln_f`.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from nanogpt_kernels import nn as nk_nn
from nanogpt_kernels._backend import BACKENDS
from nanogpt_kernels.init_gpt import init_gpt_
from nanogpt_kernels.ops.layernorm import add_layer_norm

OPS = ("layernorm", "attention", "mlp")
BackendSpec = Union[None, str, dict]

# Dense bfloat16 peak FLOP/s of one GPU, for estimate_mfu (nanoGPT uses the A100's).
PEAK_FLOPS = {"A100": 312e12, "H100": 989e12, "H200": 989e12}


def resolve_backends(backend: BackendSpec) -> dict:
    """{"layernorm": b, "attention": b, "mlp": b} from a backend name (or None, each op's
    default: see `nanogpt_kernels.available_backends`) for every op, or a dict naming some
    ops (the others get None)."""
    if backend is None or isinstance(backend, str):
        backends = dict.fromkeys(OPS, backend)
    elif isinstance(backend, dict):
        unknown = set(backend) - set(OPS)
        if unknown:
            raise ValueError(f"backend: unknown op(s) {sorted(unknown)}; the ops are {OPS}")
        backends = {op: backend.get(op) for op in OPS}
    else:
        raise TypeError(f"backend must be a str, a dict {{op: backend}} or None, got {type(backend).__name__}")
    for op, b in backends.items():
        if b is not None and b not in BACKENDS:
            raise ValueError(f"backend for {op!r} must be one of {BACKENDS} or None, got {b!r}")
    return backends


@dataclass
class GPTConfig:
    """nanoGPT's GPTConfig, plus `backend`: "eager", "triton", "cuda", None (each op's default)
    or {"layernorm": ..., "attention": ..., "mlp": ...}."""
    block_size: int = 1024
    vocab_size: int = 50304  # GPT-2's 50257, padded up to a multiple of 64 for efficiency
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    bias: bool = True  # True: bias in Linears and LayerNorms, like GPT-2; False: a bit better and faster
    backend: BackendSpec = "eager"


class Block(nn.Module):
    """nanoGPT's Block, x + attn(ln_1(x)) then + mlp(ln_2(x)), on the residual stream as GPT
    passes it from block to block: each add is fused with the LayerNorm that follows it."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nk_nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = nk_nn.CausalSelfAttention(config.n_embd, config.n_head, bias=config.bias, dropout=config.dropout,
                                              block_size=config.block_size)
        self.ln_2 = nk_nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = nk_nn.MLP(config.n_embd, bias=config.bias, dropout=config.dropout)

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None, next_ln: nk_nn.LayerNorm | None = None):
        """block(x) is nanoGPT's: the residual stream after this block. GPT passes the stream
        on fused: h = ln_1(x), which the previous block's last add (or GPT, for the first
        block) computed with it, and next_ln, the next block's ln_1 (ln_f after the last
        block); then it returns (x', next_ln(x')), the last add done by next_ln's kernel."""
        x, h = _add_ln(x, self.attn(self.ln_1(x) if h is None else h), self.ln_2)
        if next_ln is None:
            return x + self.mlp(h)
        return _add_ln(x, self.mlp(h), next_ln)


def _add_ln(x, residual, ln: nk_nn.LayerNorm):
    """(x + residual, ln(x + residual)): eager's two ops, or one fused pass. Under autocast the
    stream is float32 and a sublayer's output bfloat16: add_layer_norm promotes as eager's `+`."""
    return add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps, backend=ln.backend)


class GPT(nn.Module):
    """nanoGPT's GPT on our modules. `seed`: the init's seed (None: drawn from torch's default
    generator, so `torch.manual_seed` fixes the init, as in nanoGPT)."""

    def __init__(self, config: GPTConfig, *, seed: Optional[int] = None):
        super().__init__()
        if config.vocab_size is None or config.block_size is None:
            raise ValueError("config.vocab_size and config.block_size must be set")
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=nk_nn.LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (https://paperswithcode.com/method/weight-tying), as nanoGPT does.
        self.transformer.wte.weight = self.lm_head.weight
        if seed is None:
            seed = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64).item())
        # nanoGPT's recipe: N(0, 0.02), c_proj.weight at 0.02/sqrt(2 * n_layer), zero biases.
        self.init_report = init_gpt_(self, seed=seed)
        self.set_backend(config.backend)

    # ----------------------------------------------------------------------------------------
    # Backends

    def set_backend(self, backend: BackendSpec) -> "GPT":
        """Switch every op (a name or None) or some ops (a dict) in place; weights are untouched."""
        backends = resolve_backends(backend)
        for m in self.modules():
            if isinstance(m, nk_nn.LayerNorm):
                m.backend = backends["layernorm"]
            elif isinstance(m, nk_nn.CausalSelfAttention):
                m.backend = backends["attention"]
            elif isinstance(m, nk_nn.MLP):
                m.backend = backends["mlp"]
        self.config.backend = backend if not isinstance(backend, dict) else dict(backends)
        return self

    @property
    def backends(self) -> dict:
        """The backend of each op, as set_backend left it."""
        return resolve_backends(self.config.backend)

    # ----------------------------------------------------------------------------------------
    # nanoGPT's API

    def get_num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; the position embeddings are subtracted by default (the token
        embeddings are not: they are tied to lm_head), as in nanoGPT."""
        n_params = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n_params -= self.transformer.wpe.weight.numel()
        return n_params

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """(logits, loss): logits [B, T, vocab] and the mean cross-entropy (ignore_index=-1)
        with targets; without targets only the last position's logits [B, 1, vocab] (nanoGPT's
        inference shortcut) and loss None."""
        b, t = idx.size()
        if t > self.config.block_size:
            raise ValueError(f"Cannot forward sequence of length {t}, block size is only {self.config.block_size}")
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        tok_emb = self.transformer.wte(idx)  # token embeddings of shape (b, t, n_embd)
        pos_emb = self.transformer.wpe(pos)  # position embeddings of shape (t, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        blocks, ln_f = self.transformer.h, self.transformer.ln_f
        if len(blocks) == 0:
            h = ln_f(x)
        else:
            # x is the residual stream, h the LayerNorm output the next sublayer reads.
            h = blocks[0].ln_1(x)
            for i, block in enumerate(blocks):
                x, h = block(x, h, blocks[i + 1].ln_1 if i + 1 < len(blocks) else ln_f)
        if targets is not None:
            logits = self.lm_head(h)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        else:
            # Inference-time mini-optimisation: only forward the lm_head on the very last position.
            logits = self.lm_head(h[:, [-1], :])  # note: using list [-1] to preserve the time dim
            loss = None
        return logits, loss

    def crop_block_size(self, block_size: int) -> None:
        """Model surgery to decrease the block size if necessary, e.g. to load GPT-2's
        pretrained checkpoint (block size 1024) and use a smaller one."""
        if block_size > self.config.block_size:
            raise ValueError(f"block_size {block_size} must be at most the current {self.config.block_size}")
        self.config.block_size = block_size
        self.transformer.wpe.weight = nn.Parameter(self.transformer.wpe.weight[:block_size])
        for block in self.transformer.h:
            block.attn.block_size = block_size

    def configure_optimizers(self, weight_decay: float, learning_rate: float, betas, device_type: str,
                             verbose: bool = True) -> torch.optim.AdamW:
        """nanoGPT's AdamW: weight decay on every >= 2-D parameter (matmul weights and
        embeddings), none on biases and LayerNorm weights; the fused AdamW on CUDA."""
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay_params = [p for n, p in param_dict.items() if p.dim() >= 2]
        nodecay_params = [p for n, p in param_dict.items() if p.dim() < 2]
        optim_groups = [{"params": decay_params, "weight_decay": weight_decay},
                        {"params": nodecay_params, "weight_decay": 0.0}]
        use_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type == "cuda"
        if verbose:
            print(f"num decayed parameter tensors: {len(decay_params)}, with "
                  f"{sum(p.numel() for p in decay_params):,} parameters")
            print(f"num non-decayed parameter tensors: {len(nodecay_params)}, with "
                  f"{sum(p.numel() for p in nodecay_params):,} parameters")
            print(f"using fused AdamW: {use_fused}")
        return torch.optim.AdamW(optim_groups, lr=learning_rate, betas=betas, **(dict(fused=True) if use_fused else {}))

    def estimate_mfu(self, fwdbwd_per_iter: int, dt: float, peak_flops: Union[None, str, float] = None) -> float:
        """Model FLOPs utilisation: achieved FLOP/s over the GPU's dense bf16 peak, with the
        PaLM paper's count (Appendix B), as nanoGPT. peak_flops: FLOP/s, a key of PEAK_FLOPS
        ("A100", "H100", "H200"), or None: the current CUDA device's if it is one of those,
        else the A100's (nanoGPT's choice)."""
        if peak_flops is None:
            peak_flops = _detect_gpu() or "A100"
        if isinstance(peak_flops, str):
            if peak_flops not in PEAK_FLOPS:
                raise ValueError(f"peak_flops must be a number or one of {sorted(PEAK_FLOPS)}, got {peak_flops!r}")
            peak_flops = PEAK_FLOPS[peak_flops]
        N = self.get_num_params()
        cfg = self.config
        L, H, Q, T = cfg.n_layer, cfg.n_head, cfg.n_embd // cfg.n_head, cfg.block_size
        flops_per_token = 6 * N + 12 * L * H * Q * T
        flops_per_iter = flops_per_token * T * fwdbwd_per_iter
        return flops_per_iter / dt / peak_flops

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Sample max_new_tokens after the conditioning sequence idx (LongTensor [b, t]), feeding
        predictions back in; use eval() mode for this."""
        for _ in range(max_new_tokens):
            # if the sequence context is growing too long we must crop it at block_size
            idx_cond = idx if idx.size(1) <= self.config.block_size else idx[:, -self.config.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("Inf")
            probs = F.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1, generator=generator)
            idx = torch.cat((idx, idx_next), dim=1)
        return idx


def _detect_gpu() -> Optional[str]:
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((gpu for gpu in PEAK_FLOPS if gpu in name), None)
