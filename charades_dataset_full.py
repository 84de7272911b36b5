"""The original pytorch-i3d name of the streaming whole-video dataset, kept importable for its
users: everything now lives in video_sources.py (it reads any video file or frame folder, not
only Charades)."""
from video_sources import *  # noqa: F401,F403
from video_sources import frame_io  # noqa: F401  (tests patch frame_io through this name)
