"""Distributed: the tiny GPT with our modules inside, trained under DistributedDataParallel by 2
CPU processes on gloo (each with half of every batch), gives the losses and weights of the
same training in one process. Our ops are plain autograd custom ops on plain Parameters, so
DDP's gradient hooks, bucketing and all-reduce need nothing from us."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import nanogpt_kernels as nk

STEPS, INTERPRETER_STEPS, B, T = 6, 3, 4, 32  # Triton's interpreter on the CPU is ~100x slower
CONFIG = dict(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32)
RTOL = 1e-4  # float32 rounding: the all-reduce sums the two halves' gradients in another order


def steps_for(backend):
    ops = [backend] if isinstance(backend, str) else list(backend.values())
    return INTERPRETER_STEPS if "triton" in ops else STEPS


def data(steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CONFIG["vocab_size"], (steps, B, T + 1), generator=g)
    return tokens[..., :-1], tokens[..., 1:]


def make_model(backend):
    model = nk.GPT(nk.GPTConfig(**CONFIG, backend=backend), seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    return model, opt


def train_single(backend):
    model, opt = make_model(backend)
    losses = []
    for x, y in zip(*data(steps_for(backend))):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.state_dict()


def _worker(rank, world, backend, init_file, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model, opt = make_model(backend)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        losses = []
        for x, y in zip(*data(steps_for(backend))):
            shard = slice(rank * B // world, (rank + 1) * B // world)
            _, loss = ddp(x[shard], y[shard])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # DDP averages the gradients of the shards: the full batch's mean
            opt.step()
            mean = loss.detach().clone()
            dist.all_reduce(mean)
            losses.append(mean.item() / world)
        if rank == 0:
            torch.save({"losses": losses, "state": model.state_dict()}, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["eager", "triton", "cuda", {"layernorm": "triton"}],
                         ids=lambda b: b if isinstance(b, str) else "layernorm=triton")
def test_ddp_matches_single_process(backend, tmp_path):
    assert dist.is_available() and dist.is_gloo_available(), "this torch build lacks torch.distributed with gloo"
    want_losses, want_state = train_single(backend)
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, backend, str(tmp_path / "rendezvous"), str(out)), nprocs=2, join=True)
    got = torch.load(out)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(want_losses), rtol=RTOL, atol=0)
    for name, value in want_state.items():
        torch.testing.assert_close(got["state"][name], value, rtol=0, atol=1e-5, msg=name)
