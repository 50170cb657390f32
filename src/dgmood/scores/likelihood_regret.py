"""Likelihood regret of a VAE: how much a per-image encoder could raise that image's ELBO.

References: Xiao, Yan & Amit, "Likelihood Regret: An Out-of-Distribution Detection Score For
Variational Auto-encoder", NeurIPS 2020.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from dgmood.inference import image_seeds
from dgmood.io import Progress
from dgmood.models.base import Capability
from dgmood.models.latent.posteriors import Generators, LatentPosterior, standard_normal_noise
from dgmood.models.latent.vae import VAE
from dgmood.runs import LoadedRun
from dgmood.scores.base import Score, ScoreInput, register_score

Params = dict[str, Tensor]


class _Inference(nn.Module):
    """Encoder + q(z | x): image and standard normal noise -> latents and KL per sample."""

    def __init__(self, encoder: nn.Module, posterior: LatentPosterior) -> None:
        super().__init__()
        self.encoder, self.posterior = encoder, posterior

    def forward(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        features = self.encoder(x)
        z, log_q = self.posterior.transform_noise(features, noise)
        return z, self.posterior.kl_to_prior(features, z, log_q)


def likelihood_regret(
    model: VAE,
    x: Tensor,
    *,
    steps: int = 20,
    lr: float = 1e-3,
    n_samples: int = 4,
    generator: Generators = None,
) -> Tensor:
    """``max_t ELBO(x; phi_t(x)) - ELBO(x; phi)`` per image, shape ``[B]``, in nats (>= 0).

    Every image gets its own copy of the encoder and posterior parameters ``phi``, fitted in
    parallel (``torch.func.vmap``) by ``steps`` Adam steps on that image's ELBO; the decoder
    stays fixed. All ELBOs of an image use the same ``n_samples`` noise draws, so the regret
    measures the encoder's change, not Monte Carlo noise, and taking the best step makes it
    ``>= 0`` by construction. Xiao et al. use lr 1e-4 and up to 100 steps; fewer, larger
    steps keep it affordable on a CPU.
    """
    if steps < 1 or n_samples < 1 or lr <= 0:
        raise ValueError(f"need steps >= 1, n_samples >= 1, lr > 0; got {steps}, {n_samples}, {lr}")
    inference = _Inference(model.encoder, model.posterior)
    batch = x.shape[0]
    shared = {k: v.detach() for k, v in inference.named_parameters()}
    params = {k: v.expand(batch, *v.shape).clone() for k, v in shared.items()}
    noise = standard_normal_noise((n_samples, batch, model.latent_dim), x, generator)

    def negative_elbo(p: Params, image: Tensor, eps: Tensor) -> Tensor:
        image = image.unsqueeze(0)
        z, kl = functional_call(inference, p, (image, eps.unsqueeze(1)))
        reconstruction = model._reconstruction_log_prob(image, z)
        result: Tensor = -(reconstruction - kl).mean()
        return result

    step_fn = vmap(grad_and_value(negative_elbo), in_dims=(0, 0, 1))
    first: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in params.items()}
    second: dict[str, Tensor] = {k: torch.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps_adam = 0.9, 0.999, 1e-8
    original = best = torch.empty(0)
    for step in range(steps + 1):
        grads, loss = step_fn(params, x, noise)
        elbo = -loss.detach()
        if step == 0:
            original = best = elbo
        best = torch.maximum(best, elbo)
        if step == steps:
            break
        for key, g in grads.items():
            first[key] = beta1 * first[key] + (1 - beta1) * g
            second[key] = beta2 * second[key] + (1 - beta2) * g.square()
            m_hat = first[key] / (1 - beta1 ** (step + 1))
            v_hat = second[key] / (1 - beta2 ** (step + 1))
            params[key] = params[key] - lr * m_hat / (v_hat.sqrt() + eps_adam)
    return (best - original).clamp_min(0.0)


def _vae_of(run: LoadedRun) -> VAE:
    if Capability.LATENT_POSTERIOR not in run.capabilities:
        raise ValueError(f"likelihood regret needs a VAE run, got {run.spec.name}")
    return cast(VAE, run.density_model())


@register_score
class LikelihoodRegret(Score):
    """ELBO gain from fitting the encoder to the single image: large when the VAE's amortised
    encoder was not trained for inputs like it.

    References: Xiao, Yan & Amit, "Likelihood Regret: An Out-of-Distribution Detection Score
    For Variational Auto-encoder", NeurIPS 2020.
    """

    name = "likelihood-regret"
    uses_model = True
    requires = frozenset({Capability.LATENT_POSTERIOR})

    def __init__(
        self,
        steps: int = 20,
        lr: float = 1e-3,
        n_samples: int = 4,
        batch_size: int = 16,
        seed: int = 0,
    ) -> None:
        self.steps, self.lr, self.n_samples = steps, lr, n_samples
        self.batch_size, self.seed = batch_size, seed

    def network_evaluations(
        self, run: LoadedRun, aux_runs: Mapping[str, LoadedRun] | None = None
    ) -> float | None:
        """Each optimiser step runs the encoder and the decoder forward and backward
        (``n_samples`` decoder passes), plus the ELBO before and after."""
        per_elbo = 1 + self.n_samples
        return float((self.steps + 2) * per_elbo * 2)

    def score(self, data: ScoreInput) -> np.ndarray:
        from dgmood.data.dequantize import to_model_input

        model = _vae_of(data.require_run(self.name))
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out: list[Any] = []
        bar = Progress(len(data), f"likelihood regret {data.label}", unit="images")
        try:
            for start in range(0, len(data), self.batch_size):
                chunk = data.images[start : start + self.batch_size]
                x = to_model_input(chunk, model.input_spec, "center").to(device)
                # noise seeded per image: an image's regret does not depend on its position
                generators = [
                    torch.Generator().manual_seed(seed)
                    for seed in image_seeds(chunk, self.seed, "likelihood-regret")
                ]
                regret = likelihood_regret(
                    model,
                    x,
                    steps=self.steps,
                    lr=self.lr,
                    n_samples=self.n_samples,
                    generator=generators,
                )
                out.append(regret.cpu().numpy())
                bar.update(len(chunk))
        finally:
            bar.close()
            model.train(was_training)
        return np.concatenate(out).astype(np.float64) if out else np.zeros(0)
