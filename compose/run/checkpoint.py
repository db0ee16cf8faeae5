"""Checkpoints inside a training stage, so that a killed stage resumes where it was.

A checkpoint is a folder in the stage's work folder: the weights (safetensors), the
optimizer and schedule state and the random state, the GPU's too (``torch.save``, read back with
``weights_only=True``), and ``meta.json`` with the step, the pass over the data and
the stage's fingerprint. It is written through compose.atomic;
only a checkpoint whose fingerprint matches the stage's is ever resumed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from compose import atomic

FOLDER = "checkpoint"


@dataclass(frozen=True)
class Position:
    step: int  # optimizer steps done
    epoch: int  # passes over the data started (1-based)
    batches_in_epoch: int  # batches of that pass already consumed
    last_loss: float | None


def save(folder: Path, fingerprint: str, position: Position, model, modules, optimizer, scheduler) -> None:
    with atomic.writing_folder(Path(folder)) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        for index, module in enumerate(modules):
            save_model(module, str(tmp / f"module{index}.safetensors"))
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():  # dropout on a GPU draws from its own generator
            state["cuda_rng"] = torch.cuda.get_rng_state()
        torch.save(state, tmp / "state.pt")
        meta = {"fingerprint": fingerprint, **position.__dict__}
        (tmp / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def find(folder: Path, fingerprint: str) -> Position | None:
    """The position of a resumable checkpoint for this fingerprint, if there is one."""
    try:
        meta = json.loads((atomic.recover(Path(folder)) / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not fingerprint or meta.get("fingerprint") != fingerprint:
        return None
    return Position(meta["step"], meta["epoch"], meta["batches_in_epoch"], meta["last_loss"])


def restore(folder: Path, model, modules, optimizer, scheduler) -> dict:
    """Load the states; return the random state, for ``set_random_state`` where the checkpoint
    was taken: once the resumed pass's data iterator exists (creating it draws from the random
    state) and the batches already trained on are skipped, before whatever comes next (the next
    batch, or the evaluation and the next pass's iterator when the checkpoint ended a pass)."""
    folder = Path(folder)
    load_model(model, str(folder / "model.safetensors"))
    for index, module in enumerate(modules):
        load_model(module, str(folder / f"module{index}.safetensors"))
    state = torch.load(folder / "state.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return {"cpu": state["rng"], "cuda": state.get("cuda_rng")}


def set_random_state(state: dict) -> None:
    """Put back the random state ``restore`` returned (the CPU's, and the current GPU's if it was saved)."""
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"])


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
