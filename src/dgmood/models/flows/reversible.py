"""Memory-light backpropagation through a sequence of bijections.

Every bijection is invertible, so the activations inside a sequence need not be stored for
the backward pass: only the sequence's output is kept, and the backward pass walks the
steps in reverse, recomputing each step's input from its output with ``inverse`` and then
re-running that one step's forward with gradients enabled to get its input and parameter
gradients. Peak activation memory is then one step's graph plus the sequence's input and
output, whatever the number of steps; the price is one extra inverse and forward per step
(roughly 1.5-2x the time of ordinary backprop).

Recomputed inputs carry the round-off of the inverse (float32: ~1e-6 relative per step);
the gradients therefore match ordinary backprop to round-off, not bit for bit.

References: Gomez et al., "The Reversible Residual Network: Backpropagation Without Storing
Activations", NeurIPS 2017; openai/glow ``memory_saving_gradients`` / ``f_encode`` with
``reversible`` backprop (Kingma & Dhariwal, 2018).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:  # bijection.py imports this module
    from dgmood.models.flows.bijection import Bijection


def _step_parameters(step: nn.Module) -> list[nn.Parameter]:
    return [p for p in step.parameters() if p.requires_grad]


def _unique_parameters(steps: Sequence[Bijection]) -> list[nn.Parameter]:
    """Trainable parameters of ``steps``, each once (a shared parameter is passed once)."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for step in steps:
        for param in _step_parameters(step):
            if id(param) not in seen:
                seen.add(id(param))
                out.append(param)
    return out


class _ReversibleFunction(torch.autograd.Function):
    """``(x, *params) -> (z, log|det J|)`` through ``steps``, storing only ``z``."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, steps: Sequence[Bijection], *params: Tensor
    ) -> tuple[Tensor, Tensor]:
        ctx.steps = steps
        # the recomputation in backward must run at the precision the forward ran at
        ctx.device_type = x.device.type
        ctx.autocast = torch.is_autocast_enabled(x.device.type)
        ctx.autocast_dtype = torch.get_autocast_dtype(x.device.type)
        total = x.new_zeros(x.shape[0])
        with torch.no_grad():
            h = x
            for step in steps:
                h, log_abs_det_jacobian = step(h)
                total = total + log_abs_det_jacobian
        ctx.save_for_backward(h)
        return h, total

    @staticmethod
    def backward(
        ctx: Any, grad_z: Tensor | None, grad_log_det: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        (z,) = ctx.saved_tensors
        steps: Sequence[Bijection] = ctx.steps
        grads: dict[nn.Parameter, Tensor] = {}
        if grad_z is None:
            grad_z = torch.zeros_like(z)
        if grad_log_det is None:
            grad_log_det = z.new_zeros(z.shape[0])
        h = z.detach()
        autocast = torch.autocast(ctx.device_type, dtype=ctx.autocast_dtype, enabled=ctx.autocast)
        for step in reversed(steps):
            with torch.no_grad(), autocast:
                x, _ = step.inverse(h)
            with torch.enable_grad(), autocast:
                x = x.detach().requires_grad_(True)
                out, log_abs_det_jacobian = step(x)
                params = _step_parameters(step)
                outputs, output_grads = [out], [grad_z]
                if log_abs_det_jacobian.requires_grad:  # a squeeze's is a constant zero
                    outputs.append(log_abs_det_jacobian)
                    output_grads.append(grad_log_det.expand_as(log_abs_det_jacobian))
                step_grads = torch.autograd.grad(
                    outputs, [x, *params], output_grads, allow_unused=True
                )
            grad_z = step_grads[0] if step_grads[0] is not None else torch.zeros_like(x)
            for param, grad in zip(params, step_grads[1:], strict=True):
                if grad is not None:
                    grads[param] = grads[param] + grad if param in grads else grad
            h = x.detach()
        param_grads = [grads.get(param) for param in _unique_parameters(steps)]
        return (grad_z, None, *param_grads)


def reversible_forward(steps: Sequence[Bijection], x: Tensor) -> tuple[Tensor, Tensor]:
    """``steps`` applied in order, with the memory-light backward described above."""
    params = _unique_parameters(steps)
    z, log_abs_det_jacobian = _ReversibleFunction.apply(x, list(steps), *params)
    return z, log_abs_det_jacobian
