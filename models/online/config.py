"""Configuration shared by the item encoder, the session encoder and the online trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """Hyper-parameters. Frozen, so a config can be stored in a checkpoint and compared."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(default=64, ge=1)
    lr: float = Field(default=0.005, gt=0)
    # Negatives sampled from unigram^0.75 per micro-batch, shared by every example in it
    # (on top of the in-batch targets the session loss also uses).
    negatives: int = Field(default=64, ge=1)
    objective: Literal["sgns", "bpr"] = "sgns"
    # How many of the newest prefix items act as skip-gram context for the target.
    window: int = Field(default=5, ge=1)
    # Longest prefix the session encoder reads (newest items kept).
    max_prefix: int = Field(default=50, ge=1)
    # Weight of the item objective (sgns/bpr) next to the session next-item loss.
    item_loss_weight: float = Field(default=1.0, ge=0)
    init_std: float = Field(default=0.1, gt=0)
    initial_capacity: int = Field(default=1024, ge=1)
    seed: int = 0
