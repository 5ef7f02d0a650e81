"""The one checkpoint format, written atomically and read with weights_only=True.

A checkpoint is a dict of tensors and plain Python values only:
  format, model_name, num_classes, input_size, pruning_history, state_dict, plus
  whatever the stage adds (epoch, optimizer, scheduler, regularizer, rng, metrics).
A pruned model is never pickled: it is rebuilt by replaying `pruning_history`
(pruning.replay_pruning_history) on a freshly built model.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..models import build_model
from ..pruning import replay_pruning_history
from .files import atomic_write_bytes

FORMAT = "prune-runner/1"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_checkpoint(path: Path, payload: dict) -> str:
    """Write `payload` atomically; returns its SHA-256 (kept in completion records)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buf)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), data)
    return sha256(data)


def load_checkpoint(path: Path, expected_sha: Optional[str] = None) -> dict:
    """Load with weights_only=True (never unpickles code); checksum-verified when `expected_sha` is given."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a folder; give the checkpoint.pt file in it") from None
    if expected_sha is not None and sha256(data) != expected_sha:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (checksum mismatch)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pickle-protocol notes: the error below says what matters
            ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint {path} was refused: it holds Python objects that only running code "
                              "could restore, and checkpoints are loaded with weights_only=True") from None
    except Exception as err:  # truncated or foreign files: zip and pickle format errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a checkpoint: {reason[:160]}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a prune-runner checkpoint (format {FORMAT} expected)")
    return ckpt


def model_payload(model: nn.Module, model_name: str, num_classes: int, input_size: int, history: list) -> dict:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "model_name": model_name,
        "num_classes": num_classes,
        "input_size": input_size,
        "pruning_history": [list(h) for h in history],
        "state_dict": state,
    }


def rebuild_model(ckpt: dict, path: Path | str = "checkpoint", expect_model: Optional[str] = None,
                  expect_classes: Optional[int] = None) -> tuple[nn.Module, list]:
    """Fresh model + replayed pruning history + weights. Returns (model, history)."""
    name, classes = ckpt["model_name"], ckpt["num_classes"]
    if expect_model is not None and name != expect_model:
        raise CheckpointError(f"checkpoint {path} holds model '{name}', not '{expect_model}'")
    if expect_classes is not None and classes != expect_classes:
        raise CheckpointError(f"checkpoint {path} has {classes} classes, the dataset has {expect_classes}")
    model = build_model(name, classes, input_size=ckpt.get("input_size"))
    history = [tuple(h) for h in ckpt.get("pruning_history", [])]
    if history:
        replay_pruning_history(model, history, classes, ckpt["input_size"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {path} does not fit model '{name}': {first[:200]}") from None
    return model, history
