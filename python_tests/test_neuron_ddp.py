"""The neuron ops under DistributedDataParallel (two CPU processes, gloo): gradients are all-reduced
and equal the single-process gradient of the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spikekern.ops import lif_multistep, plif_multistep


class SpikingMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1 = torch.nn.Linear(6, 12)
        self.fc2 = torch.nn.Linear(12, 3)
        self.w = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x_seq):
        spikes, _ = lif_multistep(self.fc1(x_seq), tau=2.0)
        spikes, v_last = plif_multistep(self.fc2(spikes), self.w)
        return spikes.mean(0).sum() + v_last.square().sum()


def batch():
    return torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(1)) * 2


def worker(rank, world_size, store_path, result_path):
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=world_size)
    model = torch.nn.parallel.DistributedDataParallel(SpikingMLP())
    shard = batch().chunk(world_size, dim=1)[rank]
    model(shard).backward()
    if rank == 0:
        torch.save({name: p.grad for name, p in model.module.named_parameters()}, result_path)
    dist.destroy_process_group()


def test_ddp_gradients_match_single_process(tmp_path):
    result_path = str(tmp_path / "grads.pt")
    mp.spawn(worker, args=(2, str(tmp_path / "store"), result_path), nprocs=2, join=True)
    ddp_grads = torch.load(result_path)
    model = SpikingMLP()
    # DDP averages the two shards' gradients: the loss is a sum over the batch, so halve it.
    (sum(model(shard) for shard in batch().chunk(2, dim=1)) / 2).backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(ddp_grads[name], param.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert os.path.exists(result_path)
