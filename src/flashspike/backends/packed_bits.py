"""Small integers packed a few bits each, kept with the tensor they were packed from.

A tensor of spikes (0 or 1), or of sums of a few spike trains, needs one, two or four bits per element.
Whoever packs such a tensor (a neuron's forward kernel as it writes its spikes, or a layer that keeps
its input in bits, :mod:`flashspike.memory.spike_bits`) keeps the packed bytes with it
(:func:`keep_bits`), and a later layer reading the same tensor, or a view of all of it, takes them
(:func:`kept_bits`) instead of packing it again. The layout is fixed: the elements in the order of
the tensor's memory, ``width`` bits each, ``8 // width`` to a byte, the first in the lowest bits.
A change of the tensor in place after it was packed makes the bytes stale: they are then not given.
"""

from __future__ import annotations

import torch

__all__ = ["keep_bits", "kept_bits"]

_ATTRIBUTE = "_flashspike_packed_bits"  # on the tensor: (its version when packed, width, the bytes)


def _owner(x: torch.Tensor):
    """The tensor whose bits stand for ``x``'s (dense): ``x``, or the tensor it is a view of when it
    spans all of that one's memory from its first element (the same elements in the order of memory);
    None for a view of a part."""
    base = x._base
    if base is None:
        return x
    return base if x.numel() == base.numel() and x.storage_offset() == base.storage_offset() else None


def keep_bits(x: torch.Tensor, width: int, bits: torch.Tensor) -> None:
    """Keep ``bits``, the elements of ``x`` (dense: its memory has no gaps) packed ``width`` bits each in
    the order of its memory, with ``x`` (with the tensor it is a view of, when it spans all of it)."""
    owner = _owner(x)
    if owner is not None:
        setattr(owner, _ATTRIBUTE, (owner._version, width, bits))


def kept_bits(x: torch.Tensor, width: int):
    """The bytes kept for ``x`` (dense; or for the tensor ``x`` is a view of, when it spans all of it),
    packed ``width`` bits each and unchanged since; else None."""
    owner = _owner(x)
    kept = None if owner is None else getattr(owner, _ATTRIBUTE, None)
    if kept is None or kept[0] != owner._version or kept[1] != width:
        return None
    return kept[2]
