"""Which forward a loaded model runs on, and the words GetRuntimeInfo says it in.

The hand-written decoders (cuda/decoder.py, cpu/decoder.py) serve the Llama family
(forward/decoder_family.py); every other decoder-only model runs on transformers' own modules with
the registered attention function writing and reading the session slabs (the generic path). The
CUDA row kernels serve full-attention layers only: a model with a sliding-window, soft-capped or
sink layer attends through the slab path on every device (cpu/windowed.py).
"""

from __future__ import annotations

import torch

from kakeya.runtime.common.errors import FailedPrecondition
from kakeya.runtime.cpu import held_weights
from kakeya.runtime.forward.loaded_model import LoadedModel


def check_layers(loaded: LoadedModel, bounded: bool, deterministic: bool = False) -> bool:
    """True where every layer attends causally over its whole history (the kernels serve it);
    FailedPrecondition where the layers ask more than the chosen mode can give."""
    special = [(i, layer) for i, layer in enumerate(loaded.layers) if not layer.plain]
    if not special:
        return True
    index, layer = special[0]
    what = f"layer {index} of {loaded.architecture!r} attends with {layer.describe()}"
    if bounded:
        raise FailedPrecondition(f"bounded mode (--sink/--window) needs full-attention layers; {what}")
    if deterministic and loaded.device.type == "cuda":
        # Off the kernels a forward's GEMMs see the step's row count, which cuBLAS may answer with
        # another kernel: a row's bits would depend on its neighbours.
        raise FailedPrecondition(f"deterministic mode on CUDA needs the row kernels, which serve full-attention "
                                 f"layers only; {what} (run without --deterministic)")
    return False


def paths(loaded: LoadedModel, *, cuda: object | None, cuda_decoder: bool, cpu_decoder: bool, packed: bool,
          deterministic: bool, bounded: bool, held: str = "", kept_window: int = 0) -> dict[str, str]:
    """GetRuntimeInfo's architecture, forward_path, attention_path and weights_held_as."""
    if cuda is not None:
        forward, attention = ("cuda-decoder" if cuda_decoder else "generic"), "cuda-row-kernels"
    else:
        forward = "cpu-decoder" if cpu_decoder else "generic"
        attention = "bucketed-sdpa-slab" if deterministic and not bounded else "sdpa-slab"
    special = [layer for layer in loaded.layers if not layer.plain]
    if special:
        kinds = sorted({layer.describe() for layer in special})
        attention += f"; {len(special)} of {len(loaded.layers)} layers windowed-slab: {'; '.join(kinds)}"
    if kept_window:
        attention += f"; slabs keep the last {kept_window} positions"
    held = held or str(loaded.dtype).removeprefix("torch.") + (", MKL-packed" if packed else "")
    if loaded.weights_origin:
        held += f"; dequantized at load from {loaded.weights_origin}"
    return dict(architecture=loaded.architecture, forward_path=forward, attention_path=attention,
                weights_held_as=held)


def check_cpu_weights(loaded: LoadedModel, fmt: str) -> str:
    """The format the linears are held in (cpu/held_weights.py), "float32" where they are not
    quantized; FailedPrecondition where the asked format cannot be held."""
    if fmt == "float32":
        return fmt
    if loaded.device.type != "cpu" or loaded.dtype != torch.float32:
        raise FailedPrecondition(f"{fmt} CPU weights need a float32 model on the CPU, not {loaded.dtype} on "
                                 f"{loaded.device.type}")
    if not held_weights.available(fmt):
        raise FailedPrecondition(f"{fmt} CPU weights need torch's weight-only {fmt} CPU matmul, which this "
                                 "build lacks")
    return fmt


def kept_window(loaded: LoadedModel, draft: LoadedModel | None = None) -> int:
    """Positions a session must keep when every layer has a sliding window (the widest one), so a
    long session's slab stays that size; 0 where some layer (or the draft model's) sees its whole
    history. Hybrid models keep everything: their full-attention layers read all of it."""
    windows = [layer.window for model in (loaded, draft) if model is not None for layer in model.layers]
    if not windows or any(window is None for window in windows):
        return 0
    return max(windows)
