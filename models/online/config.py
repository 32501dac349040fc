"""Configuration shared by the item encoder, the session encoder and the online trainer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ModelConfig"]


class ModelConfig(BaseModel):
    """Hyper-parameters. Frozen, so a config can be stored in a checkpoint and compared.

    The defaults were chosen on the validation slices (the history's last fifth, as for the
    baselines) of MovieLens-100k, ml-latest-small (whole and first 20,000 events) and the
    Instacart sample, 3 seeds, against every switch alone and together (docs/model.md): 256
    log-Q corrected negatives, one replayed step of 128 examples per step, and the repeat gate
    over each user's plain counts.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dim: int = Field(default=64, ge=1)
    lr: float = Field(default=0.005, gt=0)
    # Negatives sampled per micro-batch (see negative_power), shared by every example in it
    # (on top of the in-batch targets the session loss also uses).
    negatives: int = Field(default=256, ge=1)
    # The negatives' sampler is unigram^negative_power of the click counts. The session loss
    # corrects for it (log-Q) whatever it is; the item objective (sgns) does not, and with
    # word2vec's 0.75 it learns PMI plus ~0.25 log(clicks of the target): a popularity lean
    # that shows in the nearest neighbours. 1.0 samples negatives as often as items occur.
    negative_power: float = Field(default=0.75, gt=0, le=1)
    # Subsampling of frequent items in the item objective (word2vec's t): a (context, target)
    # pair counts min(1, sqrt(t / f)) for each of its items, f = the item's share of clicks;
    # 0 = off.
    subsample: float = Field(default=0.0, ge=0)
    objective: Literal["sgns", "bpr"] = "sgns"
    # How many of the newest prefix items act as skip-gram context for the target.
    window: int = Field(default=5, ge=1)
    # Longest prefix the session encoder reads (newest items kept).
    max_prefix: int = Field(default=50, ge=1)
    # Weight of the item objective (sgns/bpr) next to the session next-item loss.
    item_loss_weight: float = Field(default=1.0, ge=0)
    init_std: float = Field(default=0.1, gt=0)
    # Learning each example more than once (one SGD pass over a stream underfits): after each
    # step, ``replay`` extra steps on ``replay_batch`` examples (None: as many as the step had)
    # drawn uniformly from the ``replay_size`` most recent ones.
    replay: int = Field(default=1, ge=0)
    replay_size: int = Field(default=10_000, ge=1)
    replay_batch: int | None = Field(default=128, ge=1)
    # The repeat gate (``repeat_gate.RepeatGate``) over each user's own history
    # (``user_history.UserHistory``): counts decayed ``history_decay`` per session, bounded to
    # ``history_users`` users of ``history_items`` items each; the gate's Adagrad rate.
    repeat_gate: bool = True
    history_decay: float = Field(default=1.0, gt=0, le=1)
    history_users: int = Field(default=50_000, ge=1)
    history_items: int = Field(default=100, ge=1)
    gate_lr: float = Field(default=2.0, gt=0)
    # What followed what in sessions (``item_follows.ItemFollows``), two more features of the
    # repeat gate, bounded to ``follows_next`` followers per item and ``follows_entries`` in all.
    follows: bool = True
    follows_entries: int = Field(default=1_000_000, ge=1)
    follows_next: int = Field(default=100, ge=1)
    initial_capacity: int = Field(default=1024, ge=1)
    seed: int = 0
