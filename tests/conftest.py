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
    return samples.fetch_sample_videos(CACHE / "samples")
