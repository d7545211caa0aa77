"""What a saved LoRA adapter is: its file names, its format tag and the formula of a merged weight.

Kept apart from `backends.lora` (which needs Keras) and `backends.adapter_files`
(which reads adapters into runtime tensors), so both share one definition.
"""

from __future__ import annotations

import numpy as np

ADAPTER_WEIGHTS = "adapter.lora.h5"
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FORMAT = "gpt2reg-lora/1"


def merged_kernel(kernel: np.ndarray, a: np.ndarray, b: np.ndarray, scale: float) -> np.ndarray:
    """W + scale · A·B (A·B reshaped to the kernel's shape), summed in float64 and kept as float32:
    the one formula of a merged variant's weights."""
    update = (scale * (a.astype("float64") @ b.astype("float64"))).reshape(kernel.shape)
    return (kernel.astype("float64") + update).astype("float32")
