"""torch.compile where it can work, eager where it cannot, said in one line.

Inductor's CPU backend writes C++ and builds it at the first call: without a C++ compiler torch.compile
fails then, mid-training, with a long traceback. ``compile_or_eager`` checks up front (on a CUDA device
Inductor writes Triton instead and needs no host compiler) and falls back to the eager module with one line
naming the reason and the fix. ``benchmarks/bench_step.py`` measures whether compiling pays for the student.
"""

from __future__ import annotations

import os
import shutil
from typing import Callable

import torch
from torch import nn

__all__ = ["cpp_compiler", "compile_or_eager"]


def cpp_compiler() -> str | None:
    """The C++ compiler Inductor's CPU backend would run (the CXX environment variable, else Inductor's
    configured one, else the first of c++ / g++ / clang++ on PATH), or None when there is none."""
    names = [os.environ.get("CXX", "")]
    try:
        from torch._inductor import config as inductor_config

        cxx = inductor_config.cpp.cxx
        names += [c for c in (cxx if isinstance(cxx, (tuple, list)) else (cxx,)) if c]
    except Exception:  # noqa: BLE001 - an inductor without that setting: the usual names below
        pass
    names += ["c++", "g++", "clang++"]
    for name in names:
        found = name and shutil.which(name)
        if found:
            return found
    return None


def compile_or_eager(model: nn.Module, device, log: Callable[[str], None] = print, **options) -> nn.Module:
    """``torch.compile(model, **options)`` when Inductor can build code for ``device``, else ``model`` itself
    with one line through ``log`` saying why and what to do."""
    device = torch.device(device)
    if device.type == "cpu" and cpp_compiler() is None:
        log("torch.compile: no C++ compiler found (Inductor's CPU backend needs one: install g++ or clang, or set "
            "CXX); running eager")
        return model
    return torch.compile(model, **options)
