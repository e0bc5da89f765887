import os

# the tests' thread count is chosen here, so fast.threads = "auto" (flowkd.threads) leaves it as it is: two runs
# a test compares train on the same threads whatever the machine's load (tests/test_threads.py unsets it)
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread (two threads on a loaded 2-core machine made such tests up to 20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _bank_cache(tmp_path_factory):
    """Banks of teacher views that a test does not place itself go to a temporary folder, never ~/.cache."""
    old = os.environ.get("FLOWKD_CACHE")
    os.environ["FLOWKD_CACHE"] = str(tmp_path_factory.mktemp("flowkd-cache"))
    yield
    if old is None:
        os.environ.pop("FLOWKD_CACHE", None)
    else:
        os.environ["FLOWKD_CACHE"] = old
