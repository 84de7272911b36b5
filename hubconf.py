"""torch.hub entry point:

    model = torch.hub.load("/path/to/this/repo", "i3d", weights="rgb_scratch", source="local")

weights: None (random init), a name from `python weights.py --list` (made in models/ first if
missing), or a path to a .pt file. The model comes back in eval mode.
"""
from __future__ import annotations

from pathlib import Path

import weights as weights_mod
from errors import UserError
from pytorch_i3d import InceptionI3d

dependencies = ["torch", "numpy"]


def i3d(weights: str | None = None, num_classes: int | None = None, in_channels: int | None = None,
        final_endpoint: str = "Logits", models_dir: str | None = None, device: str = "cpu", **kwargs):
    """InceptionI3d. With weights, num_classes/in_channels default to the weights' own; a
    different num_classes gets a new random classifier (for fine-tuning)."""
    if weights is None:
        model = InceptionI3d(num_classes=num_classes or 400, in_channels=in_channels or 3,
                             final_endpoint=final_endpoint, **kwargs)
        return model.to(device).eval()
    models_dir = Path(models_dir) if models_dir else weights_mod.MODELS_DIR
    if weights in weights_mod.WEIGHTS and not Path(weights).is_file():
        path = weights_mod.ensure_weights(weights, models_dir)
    else:
        path = weights_mod.resolve_weights(weights, models_dir)
    model = weights_mod.load_model(path, final_endpoint=final_endpoint, **kwargs)
    if in_channels is not None and in_channels != model.in_channels:
        raise UserError(f"{path}: weights have {model.in_channels} input channels, not {in_channels}")
    if num_classes is not None and num_classes != model.num_classes and final_endpoint in ("Logits", "Predictions"):
        model.replace_logits(num_classes)
    return model.to(device).eval()
