"""The attention function registered with transformers: writes each session's new K/V into its slab and attends.

transformers calls it once per layer with the packed queries of every row in the step
([1, heads, T, head_dim], RoPE already applied). The step layout travels as a forward kwarg,
so no transformers Cache object is involved and nothing is copied per step but the new rows.
A layer that hands over a sliding window, a logit soft-cap or attention sinks (what its family's
implementation passes the interface) attends on the slab path that honours them (cpu/windowed.py).
"""

from __future__ import annotations

from transformers import AttentionInterface

from kakeya.runtime.cpu.attention import attend_cpu
from kakeya.runtime.cpu.windowed import attend_windowed
from kakeya.runtime.forward.layer_attention import LayerAttention
from kakeya.runtime.forward.rows import StepLayout

ATTENTION_NAME = "kakeya"


def kakeya_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     kakeya_layout: StepLayout | None = None, sliding_window=None, softcap=None, s_aux=None, **_):
    if kakeya_layout is None:
        raise RuntimeError("the kakeya attention function needs a step layout")
    layer = module.layer_idx
    if sliding_window or softcap or s_aux is not None:
        # Only the slab path serves these layers: the runner keeps such models off the CUDA kernels.
        rule = LayerAttention(int(sliding_window) if sliding_window else None, softcap or None, s_aux is not None)
        return attend_windowed(kakeya_layout, layer, query, key, value, scaling, rule, s_aux), None
    if kakeya_layout.cuda is not None:
        # Imported here, not at the top: the CUDA kernels need triton, which CPU builds of torch lack.
        from kakeya.runtime.cuda.attention import attend

        out = attend(kakeya_layout, layer, query[0].transpose(0, 1), key[0].transpose(0, 1),
                     value[0].transpose(0, 1), scaling)
        return out[None], None
    return attend_cpu(kakeya_layout, layer, query, key, value, scaling), None


AttentionInterface.register(ATTENTION_NAME, kakeya_attention)
