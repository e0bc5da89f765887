"""The README's Python example runs as written (with tiny epochs and a small synthetic problem)."""

import re
from pathlib import Path

import torch
from torch import nn

README = Path(__file__).resolve().parents[1] / "README.md"


class MyStudent(nn.Module):
    def __init__(self, width=1.0):
        super().__init__()
        c = max(1, int(4 * width))
        self.block1 = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.block2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.embed = nn.Linear(2 * c * 4 * 4, 8 * c)
        self.embed_relu = nn.ReLU()
        self.head = nn.Linear(8 * c, 10)

    def forward(self, x):
        return self.head(self.embed_relu(self.embed(self.block2(self.block1(x)).flatten(1))))


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.body(x))


def test_readme_python_example_runs():
    text = README.read_text()
    code = re.search(r"## Distil your own teacher.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20
    code = re.sub(r"epochs=\[[^\]]*\]", "epochs=[1]", code)
    code = re.sub(r"lr=\[[^\]]*\]", "lr=[1e-3]", code)
    g = torch.Generator().manual_seed(0)
    ns = {"MyStudent": MyStudent, "teacher": Teacher(),
          "images": torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8),
          "labels": torch.randint(0, 10, (64,), generator=g)}
    exec(compile(code, "README.md", "exec"), ns)
    student, aux = ns["student"], ns["aux"]
    assert aux.embed.out_features == 2 * student.embed.out_features  # the auxiliary is the student x2
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert ns["flow"].weights(0) == [100.0, 100.0, 1.0]
