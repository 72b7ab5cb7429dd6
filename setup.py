"""Builds missingglow._C: the C++ kernels always, the CUDA kernels when they can be built.

CUDA is built when torch is a CUDA build and nvcc is found, or when FORCE_CUDA=1 (a build host
without a GPU, such as CI, still compiles and links them). FORCE_ONLY_CPU=1 skips CUDA.
"""

import glob
import os
import sys

from setuptools import find_packages, setup
from torch.utils import cpp_extension


def want_cuda():
    if os.environ.get("FORCE_ONLY_CPU", "0") == "1":
        return False
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    import torch

    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def extension():
    here = os.path.dirname(os.path.abspath(__file__))
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    define_macros = []
    # the C++ standard is torch's own choice (2.14 needs C++20); no code reads errno, and setting
    # it keeps sqrt out of vectorised loops. at::parallel_for is a header template that runs
    # serially unless compiled with OpenMP; linked with -fopenmp the library needs libgomp.so.1,
    # which the loader finds already loaded by torch (one OpenMP runtime, torch's thread count).
    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    extra = {"cxx": ["-O3", "-fno-math-errno", *openmp]}
    builder = cpp_extension.CppExtension
    if want_cuda():
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define_macros.append(("MISSINGGLOW_WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        builder = cpp_extension.CUDAExtension
    return builder(
        name="missingglow._C",
        sources=sources,
        include_dirs=[os.path.join(here, "csrc")],
        define_macros=define_macros,
        extra_compile_args=extra,
        extra_link_args=openmp,
        py_limited_api=False,
    )


setup(
    name="missingglow",
    version="0.1.0",
    description="Glow normalizing flows trained on images with missing squares",
    packages=find_packages(include=["missingglow", "missingglow.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "pillow", "click"],
    extras_require={  # evaluation only, imported lazily: the core never needs NumPy
        "baselines": ["scikit-image", "opencv-python-headless"],
        "lint": ["ruff", "clang-format==23.1.5"],
    },
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["missingglow=missingglow.cli:main"]},
)
