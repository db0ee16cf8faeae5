"""Moving batches to the model's device, and waiting for it, the same way for every measurement."""

from __future__ import annotations

import torch


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously), so that a clock read after it is honest."""
    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize()


def to_device(batch: dict, device) -> dict:
    """The batch with every tensor on ``device`` (other values as they are)."""
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
