"""The installation has the compiled ops it was built with."""

import os

import pytest
import torch

import boltzgrad as bg

# the ops with a kernel per device (the others are compositions of these and of torch ops)
KERNELS = ["smeared_scatter", "smeared_gather", "comoment_merge", "neighbor_search", "pair_vectors"]


def test_compiled_backends_reports_what_is_loaded():
    info = bg.compiled_backends()
    assert info["cpu"] is True, info  # the C++ CPU ops always build
    assert info["cuda_device"] == torch.cuda.is_available()
    assert set(info["details"]) == {"_C", "_C_cuda"}
    for op in KERNELS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"boltzgrad::{op}", "CPU"), op


@pytest.mark.skipif(os.environ.get("BOLTZGRAD_EXPECT_CUDA") != "1",
                    reason="set BOLTZGRAD_EXPECT_CUDA=1 (`make test BOLTZGRAD_CUDA=1` does) to require the CUDA build")
def test_cuda_kernels_were_compiled_and_load():
    info = bg.compiled_backends()
    assert info["cuda"] is True, info["details"]
    for op in KERNELS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"boltzgrad::{op}", "CUDA"), op
