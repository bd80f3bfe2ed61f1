"""Optional C++ kernels for the CPU, compiled on first use by torch's extension builder.

Each kernel is one C++ source file in this folder, built into its own module by
`load(name)` the first time a process asks for it (ninja and a C++ compiler; about a minute
once, then cached by torch under ~/.cache/torch_extensions or $TORCH_EXTENSIONS_DIR). A
machine without them, or a user who sets RECEMB_NATIVE=0, gets None: every caller keeps a
plain-PyTorch path that computes the same values, and the tests compare the two wherever the
kernel builds. Builds use -O3 -march=native: a cache is for the machine that filled it.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import warnings
from pathlib import Path
from types import ModuleType

SOURCES = Path(__file__).parent
FLAGS = ["-O3", "-march=native", "-fno-math-errno"]
# per kernel: float sums may be reassociated (vectorized reductions) where results are
# compared to torch within a tolerance, never where bits must match (hashing)
KERNEL_FLAGS = {"attention": ["-fassociative-math", "-fno-signed-zeros", "-fno-trapping-math", "-mprefer-vector-width=512"]}
# at::parallel_for is serial unless a kernel is built with OpenMP: ATen's header then runs
# the loop in the calling thread. Only these kernels are, and they go parallel only above a
# size (the libgomp they link is torch's own libgomp.so.1). Parallel regions on every small
# call cost more than they gain where processes share cores: the 2-process distributed
# tests ran 4x slower with hash.cpp and attention.cpp built with OpenMP.
OPENMP_KERNELS = frozenset({"rowwise_adagrad"})


def enabled() -> bool:
    """Whether native kernels may be used: RECEMB_NATIVE is unset or not '0'."""
    return os.environ.get("RECEMB_NATIVE", "1") != "0"


@functools.cache
def load(name: str) -> ModuleType | None:
    """The compiled module of SOURCES/<name>.cpp, or None (with one warning naming why) when
    native kernels are disabled or cannot be built on this machine."""
    source = SOURCES / f"{name}.cpp"
    if not source.is_file():
        raise ValueError(f"no native kernel named {name!r}: {source} does not exist")
    if not enabled():
        return None
    _put_venv_on_path()  # pip's ninja lands next to the interpreter, often not on PATH
    missing = [tool for tool in ("ninja", os.environ.get("CXX", "c++")) if shutil.which(tool) is None]
    if missing:
        warnings.warn(f"recemb native kernel {name!r} not built: {', '.join(missing)} not found; using torch ops")
        return None
    from torch.utils import cpp_extension

    openmp = ["-fopenmp"] if name in OPENMP_KERNELS else []

    try:
        return cpp_extension.load(
            name=f"recemb_{name}",
            sources=[str(source)],
            extra_cflags=FLAGS + openmp + KERNEL_FLAGS.get(name, []),
            extra_ldflags=openmp,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as error:  # a failed compile or link
        warnings.warn(f"recemb native kernel {name!r} not built ({error}); using torch ops")
        return None


def load_all() -> dict[str, ModuleType | None]:
    """Every kernel in SOURCES, built now: callers that time training call this first, so
    that a fresh machine's minute of compiling is not counted as training."""
    return {source.stem: load(source.stem) for source in sorted(SOURCES.glob("*.cpp"))}


def _put_venv_on_path() -> None:
    """Append the interpreter's bin folder to PATH, where `pip install ninja` puts ninja."""
    folder = str(Path(sys.executable).parent)
    if folder not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = os.environ.get("PATH", "") + os.pathsep + folder
