from pathlib import Path

import pytest

from nectargan_core.data.sample import generate_sample_dataset
from nectargan_core.settings import SampleDataSettings


@pytest.fixture(scope="session")
def sample_root(tmp_path_factory) -> Path:
    """A tiny copy of the bundled sample dataset: 64 px halves, 6 train / 2 val / 2 test pairs."""
    root = tmp_path_factory.mktemp("sample")
    generate_sample_dataset(SampleDataSettings(out=root, size=64, train=6, val=2, test=2, seed=0))
    return root
