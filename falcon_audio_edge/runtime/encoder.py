"""The ONNX audio encoder (Whisper encoder + stacking + connector) through onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from falcon_audio_edge.errors import BundleError


class OnnxEncoder:
    """log-mel (n_mels, T) -> audio embeddings (tokens, hidden), one window at a time."""

    def __init__(self, path: Path, n_threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = n_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BundleError(f"onnxruntime could not load {path}: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name
        self.metadata = self.session.get_modelmeta().custom_metadata_map

    def __call__(self, mel: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(mel[None], dtype=np.float32)}  # (M, T) -> (1, M, T)
        return self.session.run(None, feed)[0][0]  # (1, N, H) -> (N, H)
