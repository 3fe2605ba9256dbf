"""The stem convolution that reads an RGB image as four channels per pixel (flashspike.image_conv)."""

import copy
import io

import pytest
import torch
from torch import nn

from flashspike import image_conv, neuron
from flashspike.activation_based import layer as step_layer
from flashspike.activation_based import neuron as step_neuron
from flashspike.activation_based.model import sew_resnet as step_sew_resnet
from flashspike.image_conv import ImageConv2d
from flashspike.model import sew_resnet, spiking_resnet


def _image(n=2, h=12, w=10, device="cpu", dtype=torch.float32):
    return torch.rand(n, 3, h, w, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


def _pair(device="cpu"):
    torch.manual_seed(0)
    plain = nn.Conv2d(3, 8, 5, stride=2, padding=2, bias=True).to(device)
    image = ImageConv2d(3, 8, 5, stride=2, padding=2, bias=True).to(device)
    image.load_state_dict(plain.state_dict())
    return plain, image


def test_padding_adds_a_zero_channel_and_keeps_the_gradient():
    t = torch.randn(4, 3, 5, 5, requires_grad=True)
    p = image_conv.padded(t, torch.bfloat16)
    assert p.shape == (4, 4, 5, 5) and p.dtype == torch.bfloat16
    assert p.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p[:, 3], torch.zeros(4, 5, 5, dtype=torch.bfloat16))
    assert torch.equal(p[:, :3], t.detach().to(torch.bfloat16))
    grad = torch.randn(4, 4, 5, 5, dtype=torch.bfloat16)
    (g,) = torch.autograd.grad(p, t, grad)
    assert g.dtype == torch.float32 and torch.equal(g, grad[:, :3].float())


def test_the_padded_path_computes_the_plain_convolution(monkeypatch):
    # CPU bfloat16 autocast stands in for CUDA's float16 (the path itself is device-independent).
    monkeypatch.setattr(image_conv, "pads", lambda conv, x: True)
    plain, image = _pair()
    x = _image()
    results = []
    for conv in (plain, image):
        conv.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        y.float().square().sum().backward()
        results.append((y.float(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    (y0, gw0, gb0), (y1, gw1, gb1) = results
    assert gw1.dtype == torch.float32 and gw1.shape == (8, 3, 5, 5)
    torch.testing.assert_close(y1, y0, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gw1, gw0, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gb1, gb0, rtol=2e-2, atol=2e-2)


def test_a_poisoned_fourth_channel_would_show(monkeypatch):
    # The check above can fail: were the fourth channel not zero, the outputs would differ.
    monkeypatch.setattr(image_conv, "pads", lambda conv, x: True)

    def dirty(t, dtype):
        out = torch.full((t.shape[0], 4, *t.shape[2:]), 1.0, dtype=dtype).contiguous(memory_format=torch.channels_last)
        out[:, :3].copy_(t)
        return out

    monkeypatch.setattr(image_conv, "padded", dirty)
    plain, image = _pair()
    x = _image()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.allclose(image(x).float(), plain(x).float(), rtol=1e-2, atol=1e-2)


def test_off_cuda_it_is_nn_conv2d():
    plain, image = _pair()
    x = _image()
    assert not image_conv.pads(image, x)
    assert torch.equal(image(x), plain(x))  # the same kernel, bit for bit
    assert repr(image) == repr(plain)
    assert isinstance(image, nn.Conv2d)


def test_the_zoos_resnet_stems_read_the_image_and_load_the_same_checkpoints():
    multi = sew_resnet.multi_step_sew_resnet18(multi_step_neuron=neuron.MultiStepIFNode, cnf="ADD")
    single = spiking_resnet.spiking_resnet18(single_step_neuron=neuron.IFNode)
    step = step_sew_resnet.sew_resnet18(cnf="ADD", spiking_neuron=step_neuron.IFNode)
    assert type(multi.conv1) is ImageConv2d and type(single.conv1) is ImageConv2d
    assert type(step.conv1) is step_layer.ImageConv2d and step.conv1.step_mode == "s"
    assert repr(step.conv1).startswith("Conv2d(3, 64") and "step_mode=s" in repr(step.conv1)
    # Only the stem: every other convolution is the plain class.
    assert sum(type(m) is ImageConv2d for m in multi.modules()) == 1
    plain = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    assert multi.conv1.state_dict().keys() == plain.state_dict().keys()
    buffer = io.BytesIO()
    torch.save(step, buffer)  # the classes pickle by name
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False).conv1) is step_layer.ImageConv2d
    assert type(copy.deepcopy(multi).conv1) is ImageConv2d


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_on_cuda_it_reads_four_channels_and_trains_as_nn_conv2d_gpu(dtype):
    plain, image = _pair("cuda")
    plain, image = (m.to(memory_format=torch.channels_last) for m in (plain, image))
    x = _image(8, 40, 36, "cuda")
    assert image_conv.pads(image, x) is False  # float32, no autocast: the plain convolution
    results = []
    for conv in (plain, image):
        conv.zero_grad()
        with torch.autocast("cuda", dtype=dtype):
            assert image_conv.pads(image, x)  # a channels-last RGB image, 16-bit autocast
            y = conv(x)
        if conv is image:  # what autograd keeps: the image padded to four channels
            saved = y.grad_fn._saved_input
            assert saved.shape[1] == 4 and saved.dtype == dtype
        y.float().square().sum().backward()
        results.append((y.float(), conv.weight.grad.clone(), conv.bias.grad.clone()))
    (y0, gw0, gb0), (y1, gw1, gb1) = results
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == torch.float16 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(y1, y0, **tolerance)
    torch.testing.assert_close(gw1, gw0, **tolerance)
    torch.testing.assert_close(gb1, gb0, **tolerance)
    for other in (x.contiguous(), x[:, :2].contiguous(memory_format=torch.channels_last)):
        with torch.autocast("cuda", dtype=dtype):
            assert not image_conv.pads(image, other)  # channel-major, or not three channels
