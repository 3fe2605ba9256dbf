#!/usr/bin/env bash
# A short last GPU check: the compile test fixed after the full run, the example's -compile flag on the
# GPU for two epochs, and a profile of one eager training step (where the GPU time goes).
export PYTHONPATH=src PYTHONUNBUFFERED=1
timeout 40 python3 -m pytest -q -p no:cacheprovider tests/test_compile.py -k "float64_exact" 2>&1 | tail -1
timeout 50 python3 - <<'PY' 2>&1 | tail -22
import torch
from flashspike import functional
from flashspike.examples.csnn import CSNN
torch.backends.cudnn.benchmark = True
net = CSNN(4, 128, "m", "cupy").cuda()
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, fused=True)
scaler = torch.amp.GradScaler("cuda")
x = torch.rand(128, 1, 28, 28, device="cuda")
y = torch.nn.functional.one_hot(torch.randint(0, 10, (128,), device="cuda"), 10).float()
def step():
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cuda", torch.float16):
        loss = torch.nn.functional.mse_loss(net(x), y)
    scaler.scale(loss).backward(); scaler.step(opt); scaler.update(); functional.reset_net(net)
for _ in range(20): step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as prof:
    for _ in range(10): step()
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=14, max_name_column_width=60))
PY
timeout 85 python3 -m flashspike.examples.conv_fashion_mnist -T 4 -b 128 -opt SGD -lr 0.1 -amp -backend auto -compile \
  -epochs 1 -data_dir .device_data/fashion-mnist -out_dir /tmp/cr 2>&1 | grep -E "^(backend|note|epoch=|error)|Error"
