"""Adversarial training (``--adversarial fgm|awp``): one perturbation per optimizer step, taken from the whole batch's
gradient, then a second pass over the same micro-batches at the perturbed point, then the exact original weights back.

- **FGM** (fast gradient method, Miyato et al. 2017, as Kaggle NLP solutions use it): the word-embedding matrix moves
  by ``eps * g / ||g||`` (``g`` its gradient, ``||g||`` the L2 norm over the whole matrix; eps 1.0 by default). The
  adversarial pass's gradient is *added* to the clean one, and the optimizer steps on their sum.
- **AWP** (adversarial weight perturbation, Wu et al. 2020, as the Feedback Prize solutions use it): every trained
  weight matrix and vector named ``weight`` moves by ``adv_lr * g / ||g|| * ||w||`` per tensor, each element clipped
  to ``eps * |w|`` of its own size (0.01 by default); the clean gradient is discarded and the optimizer steps on the
  gradient at the perturbed weights (AWP's min-max objective).

The direction comes from the gradients as they stand after the clean pass: still multiplied by the fp16 gradient
scaler's scale, which a normalised direction does not see. Non-finite gradients (an fp16 overflow) mean no
perturbation this step: the scaler then skips the step as it would without adversarial training.
"""

from __future__ import annotations

import torch

#: The methods and their default ``adv_eps`` (``--adv-eps -1`` takes these).
DEFAULT_EPS = {"fgm": 1.0, "awp": 0.01}


class FGM:
    """Perturb the word embeddings along their gradient (``attack``) and put them back exactly (``restore``)."""

    #: The adversarial pass's gradient is added to the clean one.
    keeps_clean_grads = True

    def __init__(self, model: torch.nn.Module, eps: float) -> None:
        self.param = model.backbone.get_input_embeddings().weight
        self.eps = eps
        # the copy is made once, here: its memory is held before --auto-micro-batch probes, not allocated per step
        self.backup = torch.empty_like(self.param, device=self.param.device)
        self.moved = False

    def attack(self) -> bool:
        """Move the embeddings by ``eps`` along the normalised gradient; False (nothing moved) when there is no
        gradient, it is zero, or it is not finite."""
        grad = self.param.grad
        if grad is None:
            return False
        norm = torch.linalg.vector_norm(grad.float())
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            return False
        self.backup.copy_(self.param.detach())
        self.moved = True
        self.param.data.add_(grad.to(self.param.dtype), alpha=self.eps / float(norm))
        return True

    def restore(self) -> None:
        """The embeddings as they were before ``attack`` (bit for bit); a no-op when nothing was moved."""
        if self.moved:
            self.param.data.copy_(self.backup)
            self.moved = False


class AWP:
    """Perturb every trained ``weight`` tensor along its gradient, relative to its own size, and restore them."""

    #: The optimizer steps on the gradient at the perturbed weights only.
    keeps_clean_grads = False

    def __init__(self, model: torch.nn.Module, lr: float, eps: float) -> None:
        self.params = [p for name, p in model.named_parameters() if p.requires_grad and "weight" in name]
        self.lr, self.eps = lr, eps
        # one copy of the weights, made once (memory held before --auto-micro-batch probes, not allocated per step)
        self.backup = [torch.empty_like(p) for p in self.params]
        self.moved = False

    def attack(self) -> bool:
        """Move each weight by ``lr * g / ||g|| * ||w||``, clipped elementwise to ``eps * |w|``; False (nothing
        moved) when any gradient is not finite or every one is zero."""
        pairs = [(p, p.grad) for p in self.params if p.grad is not None]
        if not pairs:
            return False
        grad_norms = torch.stack([torch.linalg.vector_norm(g.float()) for _, g in pairs])
        if not bool(torch.isfinite(grad_norms).all()) or not bool((grad_norms > 0).any()):
            return False
        with torch.no_grad():
            for p, saved in zip(self.params, self.backup):
                saved.copy_(p)
            self.moved = True
            for (p, g), g_norm in zip(pairs, grad_norms):
                if g_norm == 0:
                    continue
                step = g.to(p.dtype) * (self.lr * torch.linalg.vector_norm(p.float()) / g_norm).to(p.dtype)
                bound = self.eps * p.abs()
                p.add_(torch.maximum(torch.minimum(step, bound), -bound))
        return True

    def restore(self) -> None:
        """Every weight as it was before ``attack`` (bit for bit); a no-op when nothing was moved."""
        if self.moved:
            with torch.no_grad():
                for p, saved in zip(self.params, self.backup):
                    p.copy_(saved)
            self.moved = False


def make_adversary(model: torch.nn.Module, method: str, eps: float, lr: float) -> FGM | AWP | None:
    """The perturbation of ``--adversarial`` (None for ``none``); ``eps`` -1 takes the method's default."""
    if method == "none":
        return None
    eps = DEFAULT_EPS[method] if eps == -1 else eps
    return FGM(model, eps) if method == "fgm" else AWP(model, lr, eps)
