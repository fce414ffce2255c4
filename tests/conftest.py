import os

# Keep the on-disk profile cache inside the test session, so tests never depend on a
# developer's ~/.cache and never pollute it.
os.environ.setdefault("NIP_CACHE_DIR", os.path.join(os.path.dirname(__file__), ".cache-test"))
os.environ.setdefault("NIP_DEVICE", "cpu")

import pytest  # noqa: E402


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
