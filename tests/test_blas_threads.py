"""numpy's BLAS runs on one thread while a bundle is open, and gets its threads back when the last one closes."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from falcon_audio_edge.runtime import blas
from falcon_audio_edge.runtime.backend import open_bundle


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_open_bundles_hold_numpys_blas_to_one_thread(bundle_f32):
    if not blas_threads():
        pytest.skip("numpy has no BLAS library that threadpoolctl can see")
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        assert blas_threads() == [2] * len(blas_threads())
        first = open_bundle(bundle_f32)
        assert blas_threads() == [1] * len(blas_threads())
        second = open_bundle(bundle_f32)
        first.close()
        assert blas_threads() == [1] * len(blas_threads()), "one bundle is still open"
        second.close()
        assert blas_threads() == [2] * len(blas_threads())
        assert blas.holders() == 0
        first.close()  # closing twice gives back nothing more
        assert blas.holders() == 0


def test_a_listen_first_answerer_holds_nothing_of_its_own(answer_bundle):
    with open_bundle(answer_bundle) as chat:
        chat.prepare_listen_first()
        chat.answerer().close()
        assert blas.holders() == 1
    assert blas.holders() == 0
