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
            state = self._moments(name, param)
            if grad.is_sparse:
                grad = grad.coalesce()
                rows: Tensor | slice = grad.indices()[0]
                grad = grad.values()
            else:
                rows = slice(None)
            exp_avg = state["exp_avg"][rows].mul_(beta1).add_(grad, alpha=1 - beta1)
            exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            steps = state["steps"][rows] + 1
            state["exp_avg"][rows] = exp_avg
            state["exp_avg_sq"][rows] = exp_avg_sq
            state["steps"][rows] = steps
            # Broadcast each row's own step count over the row's trailing dimensions.
            steps = steps.reshape(-1, *([1] * (grad.dim() - 1)))
            corrected_avg = exp_avg / (1 - beta1**steps)
            corrected_sq = exp_avg_sq / (1 - beta2**steps)
            param[rows] -= self.lr * corrected_avg / (corrected_sq.sqrt() + self.eps)

    def _moments(self, name: str, param: Tensor) -> dict[str, Tensor]:
        state = self._state.get(name)
        if state is None:
            state = {
                "exp_avg": torch.zeros_like(param),
                "exp_avg_sq": torch.zeros_like(param),
                "steps": torch.zeros(param.shape[0], dtype=param.dtype),
            }
            self._state[name] = state
        missing = param.shape[0] - state["steps"].shape[0]
        if missing < 0 or state["exp_avg"].shape[1:] != param.shape[1:]:
            raise ValueError(f"parameter {name!r} shrank or changed shape")
        if missing:
            # The table grew: new rows start with fresh moments, old rows keep theirs.
            for key, value in state.items():
                state[key] = torch.cat([value, value.new_zeros(missing, *value.shape[1:])])
        return state

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        # Only the moments: lr/betas/eps come from the config, so a restart can change them.
        return {name: {k: v.clone() for k, v in s.items()} for name, s in self._state.items()}

    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        self._state = {name: {k: v.clone() for k, v in s.items()} for name, s in state.items()}
