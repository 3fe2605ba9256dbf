"""CapturedStep(distributed=True): the gradients averaged over processes inside the step.

CPU (Gloo, two processes): equal to DistributedDataParallel bit for bit (weights, BatchNorm statistics,
losses), equal to one process training on the whole batch, processes that start from other weights
made equal, and every misuse named. GPU (marked ``gpu``; NCCL, a world of one process): the captured
step with its all-reduce inside the graph replays the eager steps.
"""

import os
import pickle

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from flashspike import CapturedStep, layer, neuron, surrogate
from flashspike.cluster import leave_process_group

STEPS, GLOBAL_BATCH = 4, 8


def _net(seed, batch_norm=True):
    torch.manual_seed(seed)
    return nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), *([nn.BatchNorm2d(4)] if batch_norm else [])),
        neuron.MultiStepLIFNode(tau=2.0, surrogate_function=surrogate.ATan(), backend="torch"),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(4 * 5 * 5, 3)),
        neuron.MultiStepIFNode(v_threshold=0.3, surrogate_function=surrogate.ATan(), backend="torch"),
    )


def _loss(out, labels):
    return F.cross_entropy(out.float().mean(0), labels)


def _batches(device="cpu"):
    g = torch.Generator().manual_seed(5)
    return [((torch.rand(3, GLOBAL_BATCH, 2, 5, 5, generator=g) * 2).to(device),
             torch.randint(0, 3, (GLOBAL_BATCH,), generator=g).to(device)) for _ in range(STEPS)]


def _train(step, net, batches, rank, world):
    """Each process trains on its shard of every global batch; the losses and final state come back."""
    shard = GLOBAL_BATCH // world
    losses = [float(step(x[:, rank * shard:(rank + 1) * shard], y[rank * shard:(rank + 1) * shard]))
              for x, y in batches]
    return losses, {k: v.clone() for k, v in net.state_dict().items()}


def _worker(rank, world, init_file, out_file, batch_norm):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {}
        # DistributedDataParallel, stepped eagerly by the same class.
        net = _net(seed=0, batch_norm=batch_norm)
        ddp = nn.parallel.DistributedDataParallel(net)
        step = CapturedStep(ddp, _loss, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), capture=False)
        results["ddp"] = _train(step, net, _batches(), rank, world)
        # distributed=True, each process starting from its own weights: rank 0's are broadcast.
        net = _net(seed=rank, batch_norm=batch_norm)
        step = CapturedStep(net, _loss, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), capture=False,
                            distributed=True)
        results["averaged"] = _train(step, net, _batches(), rank, world)
        with open(f"{out_file}.{rank}", "wb") as f:
            pickle.dump(results, f)
        del step, ddp, net
    finally:
        # (the DDP model's reference cycle freed first: Gloo aborts a process that frees it at shutdown)
        leave_process_group()


def _run_two_processes(tmp_path, batch_norm):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out"), batch_norm), nprocs=2)
    results = []
    for rank in range(2):
        with open(tmp_path / f"out.{rank}", "rb") as f:
            results.append(pickle.load(f))
    return results


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    return _run_two_processes(tmp_path_factory.mktemp("gloo"), batch_norm=True)


def test_two_processes_train_as_distributed_data_parallel_bit_for_bit(two_processes):
    for rank, results in enumerate(two_processes):
        ddp_losses, ddp_state = results["ddp"]
        losses, state = results["averaged"]
        assert losses == ddp_losses, rank
        for name, value in ddp_state.items():
            assert torch.equal(state[name], value), (rank, name)  # running_mean/var: rank 0's, as DDP's
    # the processes hold equal weights at the end, though rank 1 started from other ones (the BatchNorm
    # statistics differ: each process updated rank 0's with its own last batch, as under DDP)
    for name, value in two_processes[0]["averaged"][1].items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(two_processes[1]["averaged"][1][name], value), name
    # each process saw its own shard: the losses differ between them
    assert two_processes[0]["averaged"][0] != two_processes[1]["averaged"][0]


def test_two_processes_train_as_one_process_on_the_whole_batch(tmp_path):
    results = _run_two_processes(tmp_path, batch_norm=False)  # BatchNorm's statistics are per process
    torch.set_num_threads(1)
    net = _net(seed=0, batch_norm=False)
    step = CapturedStep(net, _loss, torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9), capture=False)
    _, whole = _train(step, net, _batches(), rank=0, world=1)
    for name, value in whole.items():
        torch.testing.assert_close(results[0]["averaged"][1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_misuse_is_named():
    net = _net(seed=0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(RuntimeError, match="distributed=True needs torch.distributed's default process group"):
        CapturedStep(net, _loss, optimizer, capture=False, distributed=True)
    with pytest.raises(ValueError, match="process_group is used with distributed=True only"):
        CapturedStep(net, _loss, optimizer, capture=False, process_group=object())
    with pytest.raises(TypeError, match="distributed must be True or False, got 1"):
        CapturedStep(net, _loss, optimizer, capture=False, distributed=1)


def _single_process_group(tmp_path, backend):
    dist.init_process_group(backend, init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)


def test_a_ddp_wrapped_model_is_refused_with_distributed_true(tmp_path):
    _single_process_group(tmp_path, "gloo")
    try:
        net = _net(seed=0)
        ddp = nn.parallel.DistributedDataParallel(net)
        with pytest.raises(ValueError, match="pass the model without its DistributedDataParallel wrapper"):
            CapturedStep(ddp, _loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False, distributed=True)
        with pytest.raises(TypeError, match="broadcast_buffers must be True or False"):
            CapturedStep(net, _loss, torch.optim.SGD(net.parameters(), lr=0.1), capture=False, distributed=True,
                         broadcast_buffers="yes")
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
def test_the_all_reduce_is_captured_with_the_step_gpu(tmp_path, reproducible):
    """A world of one NCCL process: the collective runs inside the replayed graph, and the replays
    equal the same steps run eagerly without any process group."""
    if not dist.is_nccl_available():
        pytest.skip("this PyTorch has no NCCL")
    _single_process_group(tmp_path, "nccl")
    try:
        device = torch.device("cuda", torch.cuda.current_device())
        batches = _batches(device) * 2
        runs = []
        for distributed, capture in ((False, False), (True, True)):
            net = _net(seed=0).to(device)
            optimizer = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9, fused=True)
            step = CapturedStep(net, _loss, optimizer, torch.amp.GradScaler("cuda", init_scale=2.0 ** 10),
                                autocast_dtype=torch.float16, capture=capture, distributed=distributed)
            runs.append(_train(step, net, batches, rank=0, world=1))
            assert step.captured == capture
        (eager_losses, eager_state), (losses, state) = runs
        torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
        for name, value in eager_state.items():
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
    finally:
        dist.destroy_process_group()
