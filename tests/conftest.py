import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=40, deadline=None)
settings.register_profile("dev", max_examples=20, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng()


@pytest.fixture(scope="session")
def backbone_cache(tmp_path_factory):
    """A session-wide ONNX export cache, so each backbone is exported once per test run."""
    path = tmp_path_factory.mktemp("crosslayer-cache")
    previous = os.environ.get("CROSSLAYER_CACHE")
    os.environ["CROSSLAYER_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("CROSSLAYER_CACHE", None)
    else:
        os.environ["CROSSLAYER_CACHE"] = previous
