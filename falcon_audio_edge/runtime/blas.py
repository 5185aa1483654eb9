"""numpy's BLAS kept to one thread while a bundle is open.

OpenBLAS's worker threads (MKL's too) spin for a while after each matrix product, waiting for the next one. A
transcription alternates small numpy products (the CTC heads, the mel filters) with llama.cpp and onnxruntime
work that wants every core, so the spinning threads took the cores from them (measured in docs/architecture.md,
"Threads"). Every open bundle holds the limit; the last one closed gives numpy back the threads it had.
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_holders = 0
_limiter = None  # threadpoolctl's limiter while any bundle holds the limit: it restores the threads it found


def hold() -> None:
    """One more open bundle: numpy's BLAS runs on one thread from now on."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            from threadpoolctl import threadpool_limits

            _limiter = threadpool_limits(limits=1, user_api="blas")
        _holders += 1


def release() -> None:
    """One bundle fewer; the last one gives numpy its threads back."""
    global _holders, _limiter
    with _lock:
        if _holders == 0:
            return
        _holders -= 1
        if _holders == 0 and _limiter is not None:
            _limiter.restore_original_limits()
            _limiter = None


def holders() -> int:
    return _holders
