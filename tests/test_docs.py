"""The README and docs/ hold no broken link, no command the CLI would refuse, no code that does not parse, and
no path to a file that is not in the repository; docs/own-loop.md's training loop runs as written."""

import re
import shlex
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from flowkd.cli import build_parser

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"(?<!!)\[[^\]]+\]\(([^)\s]+)\)")
REPO_PATH = re.compile(r"`((?:configs|results|benchmarks|tests|src|docs)/[^`\s]+)`")


def _ids(page):
    return [p.relative_to(ROOT).as_posix() for p in page]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def _prose(page: Path) -> str:
    return FENCE.sub("", page.read_text())


def test_the_pages_exist_and_the_readme_is_a_front_page():
    names = {p.name for p in PAGES}
    assert {"README.md", "reproduce.md", "own-data.md", "own-loop.md", "comparing.md", "speed.md", "shipping.md",
            "config.md", "cli.md", "method.md", "results.md"} <= names
    assert len((ROOT / "README.md").read_text()) <= 12_000


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_links_resolve(page):
    for target in LINK.findall(_prose(page)):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page.name}: link to {target}: no such heading"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_repository_paths_named_exist(page):
    for path in REPO_PATH.findall(_prose(page)):
        path = path.rstrip(".,;:)")
        if "<" in path or "NAME" in path:
            continue
        if "|" in path:  # results/x.md|json
            stem, _, exts = path.rpartition(".")
            paths = [f"{stem}.{e}" for e in exts.split("|")]
        else:
            paths = [path]
        for p in paths:
            assert list(ROOT.glob(p)), f"{page.name}: `{p}` is not in the repository"


def _commands(code: str):
    for line in code.replace("\\\n", " ").splitlines():
        line = line.split("  #")[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in re.split(r"\s&&\s", line):
            yield shlex.split(part, comments=True)


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_code_blocks_parse(page):
    parser = build_parser()
    for lang, code in FENCE.findall(page.read_text()):
        if lang == "python":
            compile(code, str(page), "exec")
        elif lang == "toml":
            tomllib.loads(code)
        elif lang == "bash":
            for argv in _commands(code):
                if "flowkd" not in argv:
                    continue
                args = argv[argv.index("flowkd") + 1:]
                try:
                    parser.parse_args(args)
                except SystemExit:
                    pytest.fail(f"{page.name}: the CLI refuses `flowkd {' '.join(args)}`")
                for a in args:
                    if re.match(r"(configs|results|benchmarks)/", a):
                        assert (ROOT / a).exists(), f"{page.name}: `{a}` is not in the repository"
        else:
            assert lang in ("", "text", "console"), f"{page.name}: a ```{lang} block is not checked"


# ---- docs/own-loop.md's loop, on a tiny synthetic problem

class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer2 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x):
        return self.fc(self.layer3(self.layer2(x)).flatten(1))


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU())
        self.embed = nn.Linear(4 * 4 * 4, 6)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(torch.relu(self.embed(self.block2(self.block1(x)).flatten(1))))


def test_own_loop_example_runs_and_follows_the_schedule(capsys):
    text = (ROOT / "docs" / "own-loop.md").read_text()
    code = re.search(r"## Keep your loop.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 20 and "flowkd.train" not in code  # plain PyTorch, no trainer
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(48, 3, 8, 8, generator=g), torch.randint(0, 10, (48,), generator=g)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    torch.manual_seed(0)
    teacher, student = Teacher(), Student()
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    ns = {"teacher": teacher, "student": student, "loader": loader, "epochs": 3}
    exec(compile(code, "docs/own-loop.md", "exec"), ns)
    printed = [line.split(" ", 1) for line in capsys.readouterr().out.splitlines()]
    assert [int(e) for e, _ in printed] == [0, 1, 2]
    for e, rest in printed:  # the critical period, computed here: 100 * 0.7^epoch for the two intermediate pairs
        w = 100 * 0.7 ** int(e)
        weights = [float(v) for v in re.findall(r"[-\d.e]+", rest.split("]")[0])]
        assert weights == pytest.approx([w, w, 1.0])
        assert torch.isfinite(torch.tensor(float(rest.split("]")[1])))
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())  # the teacher is frozen
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in s0.items())  # the student learnt
    assert teacher.training  # FrozenTaps gives the teacher back in the mode it found it


def test_ci_runs_the_readme_setup_and_test_commands():
    block = re.search(r"## Set up.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    setup, test = [line for line in block.splitlines() if line.strip()]
    assert setup.startswith("python3 -m venv .venv && . .venv/bin/activate") and setup.endswith("&& flowkd demo")
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    install = setup.removesuffix(" && flowkd demo")
    assert install in [line.replace(" --quiet", "") for line in ci]  # the README's install, as written
    assert ci[-1] == test == "python -m pytest"  # then exactly the README's test command
