"""TC-MoA modules: per-task noisy top-k routers over a shared adapter bank, prompt
generation, source encodings and the convolutional fusion layer.

Parameter names follow the released checkpoint (`dimReduction`, `MoA.w_gate`, ...), so its
state dict loads without renaming.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# The reference replaces exact zeros with float64 machine epsilon before the log.
_LOG_FLOOR = 2.220446049250313e-16
_GATE_FLOOR = 1e-4
_NOISE_FLOOR = 0.1


def cv_squared(x: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation with the unbiased variance (Shazeer et al.)."""
    if x.numel() == 1:
        return x.new_zeros(())
    return x.float().var() / (x.float().mean() ** 2 + 1e-10)


@dataclass
class PromptControl:
    """Paper Eq. 8: p' = mu + alpha (p - mu) +/- beta, mu = 0.5. Identity by default."""

    alpha: float = 1.0
    beta: float = 0.0

    @property
    def is_identity(self) -> bool:
        return self.alpha == 1.0 and self.beta == 0.0

    def apply(self, p_a: torch.Tensor, p_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_identity:
            return p_a, p_b
        return 0.5 + self.alpha * (p_a - 0.5) + self.beta, 0.5 + self.alpha * (p_b - 0.5) - self.beta


class Expert(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)


class TaskRoutedAdapters(nn.Module):
    """Sparse mixture of adapters with one noisy top-k router per task (state-dict name `MoA`)."""

    def __init__(self, dim: int, hidden: int, num_experts: int, top_k: int, num_tasks: int):
        super().__init__()
        self.num_experts = num_experts
        self.top_k = top_k
        self.experts = nn.ModuleList(Expert(dim, hidden) for _ in range(num_experts))
        self.w_gate = nn.Parameter(torch.zeros(num_tasks, dim, num_experts))
        self.w_noise = nn.Parameter(torch.zeros(num_tasks, dim, num_experts))
        # The standard normal used for the smooth load estimate; kept for checkpoint parity.
        self.register_buffer("mean", torch.tensor([0.0]))
        self.register_buffer("std", torch.tensor([1.0]))

    def _router(self, weights: torch.Tensor, route: torch.Tensor) -> torch.Tensor:
        """Router weights for a task mix: route is (num_tasks,), one-hot for a single task."""
        return torch.einsum("t,tde->de", route, weights)

    def forward(self, y: torch.Tensor, route: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """y: (T, dim) tokens; route: (num_tasks,) router mixing weights. Returns (out, aux loss)."""
        clean = y @ self._router(self.w_gate, route)
        noisy_training = self.training
        if noisy_training:
            noise_std = F.softplus(y @ self._router(self.w_noise, route)) + _NOISE_FLOOR
            logits = clean + torch.randn_like(clean) * noise_std
        else:
            logits = clean
        k_plus = min(self.top_k + 1, self.num_experts)
        top_logits, top_idx = logits.topk(k_plus, dim=1)
        top_k_gates = torch.softmax(top_logits[:, : self.top_k], dim=1)
        gates = torch.zeros_like(logits).scatter(1, top_idx[:, : self.top_k], top_k_gates)

        if noisy_training and self.top_k < self.num_experts:
            load = self._smooth_load(clean, logits, noise_std, top_logits)
        else:
            load = (gates > 0).sum(0).float()
        aux = 1e-3 * (cv_squared(gates.sum(0)) + cv_squared(load))

        gates = gates.masked_fill(gates <= _GATE_FLOOR, 0.0)
        return self._combine(y, gates), aux

    def _smooth_load(self, clean, noisy, noise_std, top_logits) -> torch.Tensor:
        """Probability of each expert being in the top-k under the noise (Shazeer et al. 2017)."""
        normal = torch.distributions.Normal(self.mean, self.std)
        threshold_in = top_logits[:, self.top_k : self.top_k + 1]
        threshold_out = top_logits[:, self.top_k - 1 : self.top_k]
        is_in = noisy > threshold_in
        prob_if_in = normal.cdf((clean - threshold_in) / noise_std)
        prob_if_out = normal.cdf((clean - threshold_out) / noise_std)
        return torch.where(is_in, prob_if_in, prob_if_out).sum(0)

    def _combine(self, y: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """log(sum_e gate_e * exp(expert_e(y))) over the experts each token was sent to.

        Every expert runs on every token (they are tiny) and unselected ones get weight 0;
        `where` keeps an overflowing exp of an unselected expert from turning into NaN.
        """
        total = torch.zeros_like(y)
        for e, expert in enumerate(self.experts):
            gate = gates[:, e : e + 1]
            out = expert.fc2(F.relu(expert.fc1(y)))
            total = total + torch.where(gate > 0, gate * torch.exp(out), torch.zeros_like(out))
        return torch.log(total.masked_fill(total == 0, _LOG_FLOOR))


class TCMoAModule(nn.Module):
    """Looks at both token streams and returns their prompted features and the prompts.

    State-dict layout matches the reference's `blocks_MoA.K` entries; `source_encoding`
    holds the per-task, per-source shifts s (the reference keeps them unregistered).
    """

    def __init__(self, dim: int, num_tasks: int, num_experts: int, top_k: int):
        super().__init__()
        self.dim = dim
        self.norm1 = nn.LayerNorm(2 * dim)
        self.dimReduction = nn.Linear(2 * dim, dim // 4, bias=False)
        self.norm2 = nn.LayerNorm(dim // 4)
        self.MoA = TaskRoutedAdapters(dim // 4, dim // 32, num_experts, top_k, num_tasks)
        # (task, source, dim): source 0 = A, 1 = B.
        self.source_encoding = nn.Parameter(torch.empty(num_tasks, 2, dim))
        nn.init.normal_(self.source_encoding, std=0.02)
        nn.init.xavier_uniform_(self.dimReduction.weight)

    def forward(self, x: torch.Tensor, t: torch.Tensor, route: torch.Tensor, control: PromptControl):
        """x, t: (B, N, C) fp32. Returns x', t', p_A, p_B (prompts (B, N, 1)) and the aux loss."""
        b, n, c = x.shape
        y = self.norm2(self.dimReduction(self.norm1(torch.cat([x, t], dim=-1))))
        y, aux = self.MoA(y.reshape(b * n, c // 4), route)
        y = y.view(b, n, c // 4)
        p_a = torch.sigmoid(y[..., : c // 8].mean(-1, keepdim=True))
        p_b = torch.sigmoid(y[..., c // 8 :].mean(-1, keepdim=True))
        p_a, p_b = control.apply(p_a, p_b)
        shift = torch.einsum("t,tsc->sc", route, self.source_encoding)
        return p_a * x + shift[0], p_b * t + shift[1], p_a, p_b, aux


class FusionLayer(nn.Module):
    """Conv1x1 (C -> C/4) -> Conv3x3 (C/4) -> Conv1x1 (C/4 -> C), no bias, no activation."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(dim // 4, dim // 4, 3, padding=1, bias=False)
        self.conv3 = nn.Conv2d(dim // 4, dim, 1, bias=False)

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = tokens.shape
        h, w = grid_hw
        x = tokens.transpose(1, 2).reshape(b, c, h, w)
        x = self.conv3(self.conv2(self.conv1(x)))
        return x.flatten(2).transpose(1, 2)
