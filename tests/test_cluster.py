"""flashspike.cluster: the device a process trains on, and a clear error for one it cannot."""

import pytest
import torch

from flashspike.cluster import Cluster, DeviceError


def test_the_cpu_alone_is_rank_0_of_1(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    cluster = Cluster("cpu")
    assert (cluster.device, cluster.world, cluster.rank, cluster.is_main) == (torch.device("cpu"), 1, 0, True)
    total = torch.tensor([2.0, 3.0])
    assert cluster.sum(total) is total and total.tolist() == [2.0, 3.0]  # one process: nothing to add
    cluster.close()


@pytest.mark.parametrize("device", ["foo", "meta", "cuda:x"])
def test_a_device_it_cannot_train_on_is_a_value_error_naming_it(device):
    with pytest.raises(DeviceError, match=f"^{device}: not a device flashspike trains on; give cpu, cuda") as error:
        Cluster(device)
    assert isinstance(error.value, ValueError)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_without_cuda_says_to_use_the_cpu():
    with pytest.raises(DeviceError, match="^cuda:0: CUDA is not available here; use cpu$"):
        Cluster("cuda:0")
