"""Which CPU linears a model holds quantized (--cpu-weights), and the words GetRuntimeInfo says it in.

int8: every linear as int8 per channel (int8_linear.py). int4: every linear the int4 kernel takes
as 4-bit groups of 32 (int4_linear.py), the others and the lm_head as int8 per channel. Both run
on bf16 activations; everything outside the linears stays fp32.
"""

from __future__ import annotations

import torch

from kakeya.runtime.cpu import int4_linear, int8_linear
from kakeya.runtime.cpu.int4_linear import Int4Linear
from kakeya.runtime.cpu.int8_linear import Int8Linear

HELD = (Int8Linear, Int4Linear)
_WORDS = {Int4Linear: "int4 groups of 32 (bf16 scales and zeros; bf16 activations)",
          Int8Linear: "int8 per-channel (bf16 scales; bf16 activations)"}


def available(fmt: str) -> bool:
    return int8_linear.available() and (fmt != "int4" or int4_linear.available())


def _head(model: torch.nn.Module) -> torch.nn.Module | None:
    return model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None


def _held_type(linear: torch.nn.Module, head: torch.nn.Module | None, fmt: str) -> type | None:
    if isinstance(linear, HELD):
        return type(linear)
    if not isinstance(linear, torch.nn.Linear):
        return None
    if fmt == "int4" and linear is not head and int4_linear.holds(linear):
        return Int4Linear
    return Int8Linear


def quantize(model: torch.nn.Module, fmt: str) -> None:
    """Replaces every plain nn.Linear of the model with its held form (idempotent)."""
    head = _head(model)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, _held_type(child, head, fmt)(child))


def describe(model: torch.nn.Module, fmt: str) -> str:
    """weights_held_as for a model held (or about to be held) in fmt."""
    head = _head(model)
    counts = {kind: 0 for kind in _WORDS}
    for module in model.modules():
        kind = _held_type(module, head, fmt)
        if kind is not None:
            counts[kind] += 1
    parts = [f"{_WORDS[kind]} for {count} linear{'s' * (count != 1)}" for kind, count in counts.items() if count]
    return ", ".join(parts) + ", float32 elsewhere"


def fuse(modules: list[torch.nn.Module]) -> torch.nn.Module | None:
    """One held module computing the given ones side by side (each column bitwise the same), or
    None where they are not all of one held type or the joined weights do not compute the same.
    The parts' weights become views of its rows, so the weights are held once."""
    kind = type(modules[0])
    if kind not in HELD or any(type(m) is not kind for m in modules):
        return None
    fused = kind.fused(modules)
    # The int4 kernel's packed layout blocks output channels in groups of its own choosing, so
    # joined packed rows compute the parts only where the parts' widths fit its blocks: checked
    # on a probe rather than assumed.
    probe = torch.randn(2, modules[0].in_features, generator=torch.Generator().manual_seed(0))
    if not torch.equal(fused(probe), torch.cat([m(probe) for m in modules], dim=-1)):
        return None
    name = "packed" if kind is Int4Linear else "weight_int8"
    start = 0
    for module in modules:
        setattr(module, name, getattr(fused, name)[start:start + module.out_features])
        start += module.out_features
    return fused
