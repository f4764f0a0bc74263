"""Build of boltzgrad's compiled ops.

Two extension modules:
  boltzgrad._C       every csrc/*.cpp (op schemas + CPU kernels); always built.
  boltzgrad._C_cuda  every csrc/cuda/*.cpp and *.cu (CUDA kernels); built when
                     BOLTZGRAD_CUDA=1 (fails loudly if impossible), skipped when =0,
                     and with BOLTZGRAD_CUDA unset built if torch is a CUDA build and nvcc exists.
BOLTZGRAD_NO_EXT=1 skips both (used by `make` for the editable install, whose compiled ops are
then built in place, incrementally, by `python setup.py build_ext --inplace`).

A regular (non-editable) install or wheel also carries the shipped run configurations (configs/) and
reference data and models (data/) inside the package, as boltzgrad/_shipped/{configs,data}, where
boltzgrad._paths finds them when there is no source checkout around the package.
"""

import glob
import os
import shutil
import sys

import torch
from setuptools import setup
from setuptools.command.build_py import build_py
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_SRC = os.path.join(HERE, "csrc", "cuda")
# -fopenmp: at::parallel_for is inline (ATen/ParallelOpenMP.h); without it the loops run on one thread.
CXX_FLAGS = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
LINK_FLAGS = ["-fopenmp"]


def want_cuda() -> bool:
    mode = os.environ.get("BOLTZGRAD_CUDA", "").strip()
    possible = torch.version.cuda is not None and CUDA_HOME is not None and os.path.exists(
        os.path.join(CUDA_HOME, "bin", "nvcc")
    )
    if mode == "1":
        if not possible:
            sys.exit(
                "BOLTZGRAD_CUDA=1 but the CUDA extension cannot be built: "
                f"torch.version.cuda={torch.version.cuda!r}, CUDA_HOME={CUDA_HOME!r}. "
                "Install a CUDA build of torch and set CUDA_HOME to the toolkit (e.g. /usr/local/cuda)."
            )
        return True
    if mode == "0":
        return False
    if mode not in ("", "auto"):
        sys.exit(f"BOLTZGRAD_CUDA must be 0, 1 or unset, got {mode!r}")
    return possible


SHIPPED = ("configs", "data")  # folders of the checkout copied into the package (boltzgrad/_shipped/...)


class BuildPyWithShippedFiles(build_py):
    """build_py that also copies SHIPPED into the built package; an editable install reads the checkout itself."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            src = os.path.join(HERE, name)
            if not os.path.isdir(src):  # building from an sdist made without them: nothing to ship
                continue
            dst = os.path.join(self.build_lib, "boltzgrad", "_shipped", name)
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("*.tmp", "*.tmp.*", "__pycache__"))


def rel(paths):
    return [os.path.relpath(p, HERE) for p in sorted(paths)]


extensions = []
if os.environ.get("BOLTZGRAD_NO_EXT", "") != "1":
    extensions.append(CppExtension(
        "boltzgrad._C",
        rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))),
        extra_compile_args={"cxx": CXX_FLAGS},
        extra_link_args=LINK_FLAGS,
    ))
if extensions and want_cuda():
    extensions.append(
        CUDAExtension(
            "boltzgrad._C_cuda",
            rel(glob.glob(os.path.join(CUDA_SRC, "*.cpp")) + glob.glob(os.path.join(CUDA_SRC, "*.cu"))),
            extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=LINK_FLAGS,
        )
    )

setup(
    ext_modules=extensions,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True), "build_py": BuildPyWithShippedFiles},
)
