"""How the common FVD ports differ: fvd.py's reference arithmetic against each choice the ports
make differently, on the same sets (the README's table).

    python tests/fvd_ports.py [WEIGHTS.pt]      # needs `make weights samples`
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fvd  # noqa: E402
from frame_io import read_frames  # noqa: E402
from weights import MODELS_DIR  # noqa: E402

logger = logging.getLogger(__name__)


def port_table(weights: str | Path = MODELS_DIR / "rgb_scratch.pt", clips: int = 3, frames: int = 16) -> list[tuple[str, float, float, float]]:
    """FVD of the same sets under each choice the common ports make differently: rows of
    (choice, zeros vs 255 at 15 frames, zeros vs 255 at 30 frames, bikes vs bigbuckbunny clips).
    The sample videos (`make samples`) give `clips` clips of `frames` frames each. The README's
    table of the ports comes from here (`python tests/fvd_ports.py`)."""
    ext = fvd.Extractor(weights=weights, workers=0, progress=False)
    samples = ROOT / "data" / "samples"
    real = []
    for name in ("bikes.mp4", "bigbuckbunny.mp4"):
        video = read_frames(samples / name)
        starts = np.linspace(0, len(video) - frames, clips).astype(int)
        real.append(np.stack([video[s:s + frames] for s in starts]))
    # one constant video per set (all videos of such a set are equal): its row twice, covariance 0
    const = {t: [np.zeros((1, t, 64, 64, 3), np.uint8), np.full((1, t, 64, 64, 3), 255, np.uint8)] for t in (15, 30)}

    def half_pixel(v: np.ndarray) -> torch.Tensor:  # F.interpolate(align_corners=False): StyleGAN-V, VideoGPT
        x = torch.from_numpy(v).float().permute(0, 3, 1, 2)
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
        return (2 * x / 255 - 1).permute(1, 0, 2, 3)

    variants = {
        "reference: TF1 resize, [-1, 1], rgb_scratch, N-1": (lambda v: fvd.preprocess(v), 1),
        "input range [-0.5, 0.5]": (lambda v: fvd.preprocess(v) / 2, 1),
        "resize: half-pixel bilinear (F.interpolate)": (half_pixel, 1),
        "resize: antialiased bilinear (torchvision)": (lambda v: fvd.preprocess(v, resize="torch"), 1),
        "covariance with N (np.cov bias=True)": (lambda v: fvd.preprocess(v), 0),
    }
    rows, cache = [], {}
    for name, (prep, ddof) in variants.items():
        values = []
        for k, (a, b) in enumerate((const[15], const[30], real)):
            key = (id(prep) if ddof else id(variants[next(iter(variants))][0]), k)  # N vs N-1: same features
            if key not in cache:
                cache[key] = [np.concatenate([ext._run([prep(v)[None]]) for v in s]) for s in (a, b)]
            fa, fb = (np.repeat(f, 2, axis=0) if len(f) == 1 else f for f in cache[key])
            stats = [(f.mean(0), np.cov(f, rowvar=False, ddof=ddof)) for f in (fa, fb)]
            values.append(fvd.frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1]))
        rows.append((name, *values))
        logger.info("%s: %s", name, ", ".join(f"{v:.3f}" for v in values))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = port_table(*sys.argv[1:2])
    print("| choice | zeros vs 255, 15 frames | zeros vs 255, 30 frames | bikes vs bigbuckbunny, 3 x 16 frames |")
    print("| --- | --- | --- | --- |")
    for name, *values in rows:
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
