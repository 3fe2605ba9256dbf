"""One training step of a net, with what autograd kept for its backward: the memory switches' tests
compare a switched net with the plain one by these."""

import torch

from flashspike import functional


def training_step(net, x, autocast_dtype=None, after_forward=None):
    """``(output, gradients, buffers, kept)`` after one step: the output, each parameter's gradient and
    each buffer (by name, cloned), and the bytes of every storage autograd kept for the backward (each
    counted once; parameters, which live anyway, not). The loss weights every output differently;
    ``after_forward()`` runs between the forward and the backward; the net is reset after."""
    kept = {}
    parameters = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def keep(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), \
            torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = net(x)
    if after_forward is not None:
        after_forward()
    (out.float() * torch.linspace(0.5, 1.5, out.numel(), device=x.device).view_as(out)).sum().backward()
    functional.reset_net(net)
    grads = {name: p.grad.clone() for name, p in net.named_parameters()}
    return out, grads, {name: b.clone() for name, b in net.named_buffers()}, sum(kept.values())
