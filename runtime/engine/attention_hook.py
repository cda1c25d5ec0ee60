"""The attention function registered with transformers: writes each session's new K/V into its slab and attends.

transformers calls it once per layer with the packed queries of every row in the step
([1, heads, T, head_dim], RoPE already applied). The step layout travels as a forward kwarg,
so no transformers Cache object is involved and nothing is copied per step but the new rows.
"""

from __future__ import annotations

from transformers import AttentionInterface

from kakeya.runtime.cpu.attention import attend_cpu
from kakeya.runtime.forward.rows import StepLayout

ATTENTION_NAME = "kakeya"


def kakeya_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     kakeya_layout: StepLayout | None = None, **_):
    if kakeya_layout is None:
        raise RuntimeError("the kakeya attention function needs a step layout")
    layer = module.layer_idx
    if kakeya_layout.cuda is not None:
        # Imported here, not at the top: the CUDA kernels need triton, which CPU builds of torch lack.
        from kakeya.runtime.cuda.attention import attend

        out = attend(kakeya_layout, layer, query[0].transpose(0, 1), key[0].transpose(0, 1),
                     value[0].transpose(0, 1), scaling)
        return out[None], None
    return attend_cpu(kakeya_layout, layer, query, key, value, scaling), None


AttentionInterface.register(ATTENTION_NAME, kakeya_attention)
