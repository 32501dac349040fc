"""Adam that updates only the rows a micro-batch touched, over tables that grow.

Why not ``torch.optim.Adam``/``SparseAdam``: dense Adam keeps moving every row through its
momentum, so every item vector would change on every step (and "changed items" would always
be all items); ``SparseAdam`` refuses the dense gradients of the session network, so one
optimiser could not step both encoders; and both key their state by Parameter object, which
is replaced whenever an embedding table grows. Here the state is keyed by parameter *name*,
and a table that grew is simply padded with fresh (zero) moments at its next step, so weights
and optimiser state survive growth with no bookkeeping by the caller.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["RowAdam"]


class RowAdam:
    """Lazy Adam with per-row step counts (so bias correction is right for rare rows).

    Sparse gradients (``F.embedding(..., sparse=True)``) update only their rows; dense
    gradients update every row, which is plain Adam.

    A parameter first stepped with a sparse gradient keeps moments only for the rows that
    ever had one: a slot per such row, the slots doubling as rows arrive, and a slot index per
    parameter row. An item table of a million catalogue rows, few of them clicked, would
    otherwise carry two million-row moment tables (allocated at its first step; 1.2 s and
    512 MB at 1M items).
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self._state: dict[str, dict[str, Tensor]] = {}

    @torch.no_grad()
    def step(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Apply and clear the gradient of every parameter that has one."""
        beta1, beta2 = self.betas
        for name, param in named_parameters:
            grad = param.grad
            if grad is None:
                continue
            param.grad = None
            state = self._moments(name, param, sparse=grad.is_sparse)
            if grad.is_sparse:
                grad = grad.coalesce()
                rows: Tensor | slice = grad.indices()[0]
                grad = grad.values()
            else:
                rows = slice(None)
            if "slot" in state:  # sparse from its first step on; a dense gradient steps every row
                rows = torch.arange(param.shape[0]) if isinstance(rows, slice) else rows
                slots: Tensor | slice = self._slots(state, rows)
            else:
                slots = rows
            exp_avg = state["exp_avg"][slots].mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq = state["exp_avg_sq"][slots].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            steps = state["steps"][slots] + 1
            state["exp_avg"][slots] = exp_avg
            state["exp_avg_sq"][slots] = exp_avg_sq
            state["steps"][slots] = steps
            # Broadcast each row's own step count over the row's trailing dimensions.
            steps = steps.reshape(-1, *([1] * (grad.dim() - 1)))
            corrected_avg = exp_avg / (1 - beta1**steps)
            corrected_sq = exp_avg_sq / (1 - beta2**steps)
            param[rows] -= self.lr * corrected_avg / (corrected_sq.sqrt() + self.eps)

    def _moments(self, name: str, param: Tensor, sparse: bool) -> dict[str, Tensor]:
        state = self._state.get(name)
        if state is None:
            rows = 0 if sparse else param.shape[0]
            state = {
                "exp_avg": param.new_zeros(rows, *param.shape[1:]),
                "exp_avg_sq": param.new_zeros(rows, *param.shape[1:]),
                "steps": param.new_zeros(rows),
            }
            if sparse:
                state["slot"] = torch.full((param.shape[0],), -1, dtype=torch.long)
                state["used"] = torch.tensor(0)  # slots given out
            self._state[name] = state
        if state["exp_avg"].shape[1:] != param.shape[1:]:
            raise ValueError(f"parameter {name!r} changed shape")
        indexed = state["slot"] if "slot" in state else state["steps"]
        missing = param.shape[0] - indexed.shape[0]
        if missing < 0:
            raise ValueError(f"parameter {name!r} shrank")
        if missing and "slot" in state:
            # The table grew: its new rows have no slot yet.
            state["slot"] = torch.cat([state["slot"], state["slot"].new_full((missing,), -1)])
        elif missing:
            # The table grew: new rows start with fresh moments, old rows keep theirs.
            for key, value in state.items():
                state[key] = torch.cat([value, value.new_zeros(missing, *value.shape[1:])])
        return state

    @staticmethod
    def _slots(state: dict[str, Tensor], rows: Tensor) -> Tensor:
        """The moment slots of ``rows`` (unique), giving the rows without one the next free
        slots, with fresh moments."""
        slots = state["slot"][rows]
        new = rows[slots < 0]
        if len(new):
            used = int(state["used"])
            state["slot"][new] = torch.arange(used, used + len(new))
            state["used"] = torch.tensor(used + len(new))
            capacity = state["steps"].shape[0]
            if used + len(new) > capacity:
                grown = max(used + len(new), 2 * capacity)
                for key in ("exp_avg", "exp_avg_sq", "steps"):
                    value = state[key]
                    state[key] = torch.cat([value, value.new_zeros(grown - capacity, *value.shape[1:])])
            slots = state["slot"][rows]
        return slots

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        # Only the moments: lr/betas/eps come from the config, so a restart can change them.
        return {name: {k: v.clone() for k, v in s.items()} for name, s in self._state.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        # A state saved before moments had slots (one moment row per parameter row) loads as it is.
        self._state = {name: {k: v.clone() for k, v in s.items()} for name, s in state.items()}
