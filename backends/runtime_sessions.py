"""A model file opened by the runtime that executes it: onnxruntime or LiteRT, on the CPU.

Both decoding (`backends.fast_decoding`, a decoder graph with a key/value
cache) and the export checks (`backends.export`, an exported ``score`` graph)
run their files through these sessions, so a graph runs with the same
settings wherever it is measured. Each session takes named numpy inputs and
returns its outputs by name, handed over without copies.

`threads`: how many CPU threads a session computes with; None leaves the
choice to the runtime (onnxruntime: one per physical core; LiteRT: its own
default). `cpu_threads()` is every core this process may run on.

Example:
    >>> session = OnnxSession("out/onnx/model.onnx")
    >>> session.run({"token_ids": np.array([[464, 2068]], "int32")})["logits"].shape
    (1, 2, 50257)
"""

from __future__ import annotations

import os

import numpy as np


def cpu_threads() -> int:
    """The CPU cores this process may run on (its affinity, where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class OnnxSession:
    """An onnxruntime session of an ``.onnx`` file on the CPU execution provider."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initializers are noise here
        if threads is not None:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.output_names = [output.name for output in self.session.get_outputs()]

    def run(self, inputs: dict[str, np.ndarray], outputs: list[str] | None = None) -> dict[str, np.ndarray]:
        """The graph's outputs (`outputs` only, when given) for `inputs`, by name."""
        names = self.output_names if outputs is None else outputs
        return dict(zip(names, self.session.run(names, inputs)))


class LiteRTSession:
    """A LiteRT (TFLite) interpreter of a ``.tflite`` file, run through one of its signatures."""

    def __init__(self, path: str | os.PathLike, signature: str, threads: int | None = None):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.runner = self.interpreter.get_signature_runner(signature)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The signature's outputs for `inputs`, by name."""
        return self.runner(**inputs)
