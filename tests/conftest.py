import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Each test session gets its own engine cache (NIP_CACHE_DIR: finished evaluation shards, influence
# profiles, calibrations, nip's neighbour banks), set before anything imports the engine and
# inherited by every CLI subprocess and Ray worker: a second local run cannot pass on what the
# first one cached, and a developer's ~/.cache is never read or written.
SESSION_CACHE = Path(tempfile.mkdtemp(prefix="nip-test-cache-"))
os.environ["NIP_CACHE_DIR"] = str(SESSION_CACHE)
atexit.register(shutil.rmtree, SESSION_CACHE, ignore_errors=True)
os.environ.setdefault("NIP_DEVICE", "cpu")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _user_calibrations_end_with_their_test():
    """A calibration a test makes (``calibrate --data``) is the model's from then on, in every
    process that shares the cache: forget it when the test ends, so it cannot change what ``nip``
    does in a later test. The built-in calibrations and cached banks are left in place."""
    yield
    for pointer in (SESSION_CACHE / "calibration").glob("*.latest"):
        pointer.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def lenet():
    from nip_core.models import load_model
    return load_model("lenet-mnist")


@pytest.fixture(scope="session")
def digits(lenet):
    """Eight correctly classified held-out digits (tuning split) and their labels."""
    from nip_core.data import heldout_split
    x, y = heldout_split(lenet, "tune")
    return x[:8], y[:8]
