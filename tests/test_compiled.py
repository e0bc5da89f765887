"""flowkd.compiled: compile where Inductor can build code, eager with one line where it cannot."""

import torch
from torch import nn

from flowkd.compiled import compile_or_eager, cpp_compiler


def test_without_a_compiler_the_model_runs_eager_and_one_line_says_why(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    import torch._inductor.config as cfg

    monkeypatch.setattr(cfg.cpp, "cxx", (None, "/nonexistent/g++"))
    assert cpp_compiler() is None
    lines = []
    net = nn.Linear(3, 2)
    assert compile_or_eager(net, "cpu", log=lines.append) is net
    assert len(lines) == 1 and "no C++ compiler" in lines[0] and "CXX" in lines[0]


def test_the_cxx_variable_names_the_compiler(monkeypatch, tmp_path):
    fake = tmp_path / "mycxx"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert cpp_compiler() == str(fake)
    lines = []
    out = compile_or_eager(nn.Linear(3, 2), "cpu", log=lines.append)
    assert not lines and out is not None and hasattr(out, "_orig_mod")  # compiled lazily: nothing built yet
