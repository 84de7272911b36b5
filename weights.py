"""Where I3D weights come from, how they are checked, converted and loaded.

The only module that knows about weight sources. pytorch_i3d.py is architecture only.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cli import UserError
from pytorch_i3d import InceptionI3d

MODELS_DIR = Path(__file__).resolve().parent / "models"
MODE_CHANNELS = {"rgb": 3, "flow": 2}


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict from a .pt file: a plain state dict (the published pytorch-i3d files,
    our step checkpoints) or a training checkpoint holding one under 'model'. Loaded with
    weights_only=True; a DataParallel/DDP 'module.' prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise UserError(f"{path}: not a readable PyTorch weights file ({e.__class__.__name__})") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: not a state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def infer_config(state_dict: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(num_classes, in_channels) read off the tensors' shapes."""
    try:
        in_channels = state_dict["Conv3d_1a_7x7.conv3d.weight"].shape[1]
        num_classes = state_dict["logits.conv3d.weight"].shape[0]
    except KeyError as e:
        raise UserError(f"not I3D weights: no {e.args[0]} tensor") from e
    return int(num_classes), int(in_channels)


def resolve_weights(name_or_path: str | Path, models_dir: str | Path = MODELS_DIR) -> Path:
    """A path as given, or a weights name (rgb_imagenet, ...) as models_dir/NAME.pt."""
    p = Path(name_or_path)
    if p.suffix or p.is_file() or len(p.parts) > 1:
        if not p.is_file():
            raise UserError(f"{p}: no such weights file")
        return p
    candidate = Path(models_dir) / f"{p}.pt"
    if not candidate.is_file():
        raise UserError(f"{candidate}: weights {p} not present; make them with: python weights.py {p}")
    return candidate


def load_model(path: str | Path, mode: str | None = None, final_endpoint: str = "Logits",
               device: torch.device | str = "cpu", **model_kwargs) -> InceptionI3d:
    """An InceptionI3d built to fit the weights file (classes and input channels from its
    shapes), weights loaded with strict=True, in eval mode. With mode ('rgb'/'flow') given,
    weights for the other stream are refused with a clear error."""
    state = load_state_dict(path)
    num_classes, in_channels = infer_config(state)
    if mode is not None and MODE_CHANNELS[mode] != in_channels:
        other = {v: k for k, v in MODE_CHANNELS.items()}.get(in_channels, f"{in_channels}-channel")
        raise UserError(f"{path}: these are {other} weights ({in_channels} input channels); "
                        f"mode {mode} needs {MODE_CHANNELS[mode]}")
    model = InceptionI3d(num_classes=num_classes, in_channels=in_channels, final_endpoint=final_endpoint,
                         **model_kwargs)
    if final_endpoint not in ("Logits", "Predictions"):
        keep = set(model.state_dict())
        state = {k: v for k, v in state.items() if k in keep}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise UserError(f"{path}: weights do not fit the I3D model: {str(e).splitlines()[-1].strip()}") from e
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"{path}: weights do not fit the I3D model "
                        f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.to(device).eval()
