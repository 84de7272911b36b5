"""benchmark.py's soak section (issue 19): resident memory after warm-up and at the end of long jobs."""
import json

import pytest

import benchmark
from errors import UserError

MIB = 2**20


def test_soak_rss_windows():
    """Warm-up: the peak while 5-10 % was done; end: the peak over the last 5 %, not the exit."""
    samples = [(0.0, 0)] + [(k / 100, (300 if k < 5 else 900 + k) * MIB) for k in range(100)]
    samples += [(1.0, 2000 * MIB)]  # the exit, after the work
    assert benchmark.soak_rss(samples) == (910, 999)
    assert benchmark.soak_rss([(0.5, 100 * MIB), (1.0, 300 * MIB)]) == (100, 100)  # too few: first / last before 100 %
    with pytest.raises(RuntimeError, match="no resident-memory sample"):
        benchmark.soak_rss([(0.01, 100 * MIB)])


def test_soak_flags():
    args = benchmark.parse_args(["--soak", "--only", "model", "--soak-size", "32x40"])
    assert args.sections == ["model", "soak"] and args.soak_size == (32, 40)
    assert benchmark.parse_args([]).sections == list(benchmark.SECTIONS)  # soak only when asked
    for bad in (["--soak-size", "32"], ["--soak-size", "axb"], ["--soak-videos", "0"], ["--twostream-videos", "1,x"]):
        with pytest.raises(UserError):
            benchmark.parse_args(bad)


@pytest.mark.slow
def test_soak_rows_small(capsys):
    """Every soak row, small, as whole processes: both RSS figures; for the many-item rows the end
    under the warm-up RSS plus half of what keeping each item's decoded frames (16 x 96 x 128 x 3
    bytes, 0.56 MiB) for the items done between the two windows (~85 %) would add (that is what
    extract_features.py keeping every video's chunks adds: 887 -> 895 MiB, seen). The 400-frame
    video grows ~18 MiB over its first chunks whatever its frame size, more than keeping all its
    frames would add, so that row is held to the issue's 5 % only."""
    h, w, n = 96, 128, {"20 videos": 20, "FVD of 64 clips": 64}
    code = benchmark.main(["--only", "soak", "--soak-videos", "20", "--soak-frames", "400", "--soak-flow-videos", "20",
                           "--soak-clips", "64", "--soak-size", f"{h}x{w}", "--random-weights", "--json", "-q"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["row"].split(",")[0] for r in rows] == ["extract_features.py", "extract_features.py", "dense_flow.py",
                                                     "fvd.py"]
    for r in rows:
        items = next((k for key, k in n.items() if key in r["row"]), None)
        bound = 0.5 * 0.85 * items * 16 * h * w * 3 / MIB if items else 0.05 * r["rss_warm_mib"]
        assert r["section"] == "soak" and r["value"] > 0 and 200 < r["rss_warm_mib"] < 8000, r
        assert r["rss_end_mib"] - r["rss_warm_mib"] < bound, (r, bound)
        assert f"RSS {r['rss_warm_mib']:.0f} MiB after warm-up, {r['rss_end_mib']:.0f} at the end" in r["note"]
