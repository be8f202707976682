import os

import pytest

# torch is imported once for the whole session. The gradprobe plugin no longer imports it at
# start-up, and pytester's in-process runs drop the modules first imported inside them: a second
# import of torch in one process crashes.
import torch

pytest_plugins = ["pytester"]

if not os.environ.get("OMP_NUM_THREADS"):
    # the suite's models are small: one thread is fastest, and torch's default (every core) on a busy
    # machine can make a minute's work take many (OMP_NUM_THREADS=N chooses otherwise)
    torch.set_num_threads(1)

#: ``GRADPROBE_TEST_SEED=N`` shifts every seed the rule and fix tests set (``torch.manual_seed(s)`` seeds
#: ``s + N``), so that a verdict that holds on one seed only shows: CI runs those tests again at N = 1 and 2.
SEED_SHIFT = int(os.environ.get("GRADPROBE_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def _shifted_seeds(request, monkeypatch):
    if SEED_SHIFT and request.node.path.parent.name in ("rules", "fixes"):
        real = torch.manual_seed
        monkeypatch.setattr(torch, "manual_seed", lambda seed: real(int(seed) + SEED_SHIFT))
