"""One training loop for both settings: Adam (B.6) on a per-seed loss, every seed at once, with
one record hook.

Every model carries a leading seed dimension and the loss is the sum over seeds of each seed's
own loss, so each seed's gradient, and its (elementwise) Adam update, is that of its own
independent run.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .data.wikitext import batches
from .nn import adam, seed_generator
from .validate import NonFiniteError

#: ``record(step, model, loss)``: called before the update of every recorded step
Record = Callable[[int, torch.nn.Module, torch.Tensor], None]
#: a seed's loss above this multiple of its step-0 loss has diverged (training lowers the loss; an
#: Adam step with a far too large learning rate multiplies it by 1e13 on the MLP setting)
DIVERGED_RATIO = 1e4


def train(
    model: torch.nn.Module,
    loss_at: Callable[[int], torch.Tensor],
    steps: int,
    lr: float,
    *,
    record: Record | None = None,
    record_at=(),
    progress: bool | None = None,
    desc: str = "train",
) -> None:
    """Train ``model`` for ``steps`` Adam steps on ``loss_at(step) -> (S,)``, the per-seed loss of
    that step's batch, plus the model's ``balance_loss()`` (a load-balancing loss, zero for most
    routers).

    ``record(step, model, loss)`` is called at every step of ``record_at`` before that step's
    update (``loss``: the detached per-seed loss; at ``step == steps`` the model is the trained
    one). ``progress``: a tqdm bar (None: only on a terminal; False: never).

    A run that diverges stops with a ``FloatingPointError`` naming the step and the seeds
    (``model.seeds`` where the model has them, else their indices), before that step is recorded
    or updated: a per-seed loss that is NaN or Inf, or more than ``DIVERGED_RATIO`` times that
    seed's step-0 loss (where that is > 0), or (after step 0) hidden states that are no longer
    finite (``moegeo.validate.NonFiniteError`` from a layer).
    """
    record_at = set(record_at)
    opt = adam(model.parameters(), lr)
    initial = None
    for step in tqdm(range(steps + 1), desc=desc, disable=None if progress is None else not progress, leave=False):
        try:
            loss = loss_at(step)
        except NonFiniteError as err:
            if step == 0:
                raise
            raise FloatingPointError(_diverged(model, step, err.index, lr, "the hidden states are not finite")) from err
        value = loss.detach()
        initial = value if initial is None else initial
        bad = ~torch.isfinite(value) | ((initial > 0) & (value > DIVERGED_RATIO * initial))
        if bool(bad.any()):
            i = torch.nonzero(bad).flatten().tolist()
            raise FloatingPointError(
                _diverged(
                    model, step, i, lr, f"the loss is {_floats(value[i])}, against {_floats(initial[i])} at step 0"
                )
            )
        if record is not None and step in record_at:
            record(step, model, loss.detach())
        if step == steps:
            break
        opt.zero_grad(set_to_none=True)
        (loss + model.balance_loss()).sum().backward()
        opt.step()


def _diverged(model, step: int, index: list[int], lr: float, what: str) -> str:
    """The message of a diverged run: the step, the seeds at ``index`` and what went wrong."""
    seeds = getattr(model, "seeds", None)
    names = [seeds[i] for i in index] if seeds is not None else index
    return f"training diverged at step {step}: for seed(s) {names} {what}; lower the learning rate (lr = {lr:g})"


def _floats(t: torch.Tensor) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in t.tolist()) + "]"


def mse_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """The MLP setting's full-batch loss (B.6): each seed's mean squared error on its own batch,
    ``x, y: (S, N, d)`` -> a ``loss_at`` for ``train`` (the same batch every step)."""
    return lambda step: ((model(x) - y) ** 2).mean(dim=(1, 2))


def next_token_loss(model: torch.nn.Module, train_ids: torch.Tensor, batch_size: int) -> Callable[[int], torch.Tensor]:
    """The language model's loss: each seed's mean next-token cross-entropy on ``batch_size``
    windows it draws from ``train_ids`` with its own generator (``moegeo.data.wikitext.batches``),
    so a seed's run does not depend on which seeds share the stack. A ``loss_at`` for ``train``
    (one fresh batch per call, in step order)."""
    gens = [seed_generator(s, "lm/data") for s in model.seeds]

    def loss_at(step: int) -> torch.Tensor:
        xs, ys = zip(*(batches(train_ids, model.cfg.context, batch_size, g) for g in gens))
        return model.loss(torch.stack(xs), torch.stack(ys))

    return loss_at
