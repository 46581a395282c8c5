"""A method written outside the package, as a user would write one (used by test_method_registry)."""

from dataclasses import dataclass

import torch

import regrow


@dataclass(frozen=True)
class NoisyArgs(regrow.DynamicArgs):
    noise: float = regrow.arg(0.1, "weight of the random term", (lambda v: v >= 0, "x >= 0"))


@regrow.register
class NoisyRigL(regrow.DynamicSparsifier):
    """RigL whose grow score is |gradient| plus seeded uniform noise."""

    name = "noisy_rigl"
    Args = NoisyArgs
    traits = regrow.Traits(
        needs_total_steps=True,
        conserves_active_counts=True,
        updates_before_step=True,
        dense_backward="on_update",
    )

    def grow_scores(self, step: int, index: int, grad: torch.Tensor | None) -> torch.Tensor:
        param = self.params[index]
        generator = torch.Generator(param.device).manual_seed(self.seed * 7919 + step * 31 + index)
        noise = torch.rand(param.shape, generator=generator, device=param.device)
        return (torch.zeros_like(param) if grad is None else grad.abs()) + self.args.noise * noise
