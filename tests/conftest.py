"""pytest's fixtures, and the checkout on sys.path so tests import `helpers` and the package.

Every test is seeded from its own id: torch's global generator and Python's `random` before it
starts, and the `gen` fixture's generator, so a test gives the same answer in every run, alone or
in the whole suite, in any order. Random seeds are an opt-in job (README, Development):

    MISSINGGLOW_TEST_SEEDS=random ./run.sh test     # a fresh seed per test, printed on failure
    MISSINGGLOW_TEST_SEED=1234 ./run.sh test -k X   # replay the seed a failure printed
"""

import hashlib
import os
import random
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Training follows the cores other processes leave free unless the thread count is fixed; a test
# that compares two runs bit for bit needs the same count in both, whatever else the machine runs.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


def seed_for(nodeid):
    """The test's seed: its id hashed, unless the environment asks for another (see above)."""
    if os.environ.get("MISSINGGLOW_TEST_SEED"):
        return int(os.environ["MISSINGGLOW_TEST_SEED"])
    if os.environ.get("MISSINGGLOW_TEST_SEEDS") == "random":
        return int.from_bytes(os.urandom(4), "little")
    return int.from_bytes(hashlib.sha256(nodeid.encode()).digest()[:4], "little")


def _seed_globals(seed):
    torch.manual_seed(seed)
    random.seed(seed)


@pytest.fixture(scope="session", autouse=True)
def session_seed():
    """Session fixtures (built before any test) draw from a fixed state too."""
    _seed_globals(seed_for("session"))


@pytest.fixture(scope="module", autouse=True)
def module_seed(request):
    """Module fixtures (a trained tiny run, a bank) draw from their module's seed, so they are the
    same whether the module runs alone or after others."""
    _seed_globals(seed_for(request.module.__name__))


@pytest.fixture(autouse=True)
def test_seed(request):
    """Seed the global generators from this test's id; the seed is printed, so pytest shows it
    beside a failure (MISSINGGLOW_TEST_SEED=N replays it)."""
    seed = seed_for(request.node.nodeid)
    print(f"MISSINGGLOW_TEST_SEED={seed}")
    _seed_globals(seed)
    return seed


@pytest.fixture
def gen(test_seed):
    """A generator of the test's own, seeded from its id (apart from torch's global one)."""
    return torch.Generator().manual_seed(test_seed ^ 0x5EED)


@pytest.fixture
def float32_proper():
    """cuDNN's float32 convolutions and matmuls without TF32 (10-bit mantissas), which would make
    the float32 reference itself 1e-3 off and every float32 check meaningless on a GPU."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


@pytest.fixture
def torch_threads():
    """torch's thread count put back after the test, which may set its own."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """An image cache of the test's own (MISSINGGLOW_CACHE), so that training tests neither read
    nor write the user's; modules that train take it for every test through `pytestmark`."""
    monkeypatch.setenv("MISSINGGLOW_CACHE", str(tmp_path / "cache"))
