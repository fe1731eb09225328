"""ViT building blocks of the frozen MAE backbone: patch embedding, position tables and
shifted-window attention blocks with a learned relative position bias.

Both source streams run through the same blocks as one batch (2B), and all windows of a
batch go through a single `scaled_dot_product_attention` call.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_pos_table(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos table for a grid x grid layout, with a leading zero cls row.

    Channels [0, dim/2) encode the column index, [dim/2, dim) the row index; each half is
    [sin(pos * w_k)] + [cos(pos * w_k)], w_k = 10000^(-k / (dim/4)). Returns (1, 1 + grid^2, dim).
    """
    if dim % 4:
        raise ValueError(f"position table dim {dim} must be divisible by 4")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")

    def encode(pos: np.ndarray) -> np.ndarray:
        angles = pos.reshape(-1, 1) * omega[None, :]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    table = np.concatenate([encode(cols), encode(rows)], axis=1)
    table = np.concatenate([np.zeros((1, dim)), table], axis=0)
    return torch.from_numpy(table).float().unsqueeze(0)


def interpolate_pos_table(table: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Resize a (1, 1 + g^2, D) table (cls row dropped) to the token grid: (1, H*W, D).

    Faithful to the reference: it interpolates to size (W, H) and flattens that row-major,
    which equals the natural layout for square grids (the reference trains on square tiles)
    and is what a released checkpoint expects on non-square ones.
    """
    h, w = grid_hw
    g = math.isqrt(table.shape[1] - 1)
    grid = table[:, 1:, :].reshape(1, g, g, -1).permute(0, 3, 1, 2)
    if (w, h) != (g, g):
        grid = F.interpolate(grid, size=(w, h), mode="bilinear", align_corners=False)
    return grid.reshape(1, grid.shape[1], h * w).transpose(1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return x.flatten(2).transpose(1, 2), (h, w)


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) index into a ((2w-1)^2, heads) bias table, Swin layout."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)
    return rel[0] * (2 * window - 1) + rel[1]


class RelativePositionBias(nn.Module):
    """One learned bias table shared by a pair of blocks; returns (heads, w^2, w^2)."""

    def __init__(self, window: int, num_heads: int):
        super().__init__()
        self.window = window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, num_heads))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)
        # Derived from the window size, so not saved (the reference saves it; loaders verify it).
        self.register_buffer("relative_position_index", relative_position_index(window), persistent=False)

    def forward(self) -> torch.Tensor:
        n = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(n, n, -1).permute(2, 0, 1).contiguous()


class Attention(nn.Module):
    """Multi-head self-attention within windows (timm qkv layout: (3, heads, head_dim))."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, windows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        nw, n, c = windows.shape
        qkv = self.qkv(windows).reshape(nw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # One call for every window of the batch; the bias broadcasts over windows.
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype).unsqueeze(0))
        return self.proj(out.transpose(1, 2).reshape(nw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU, as timm's default
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@functools.lru_cache(maxsize=64)
def window_order(h: int, w: int, window: int, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token permutations between row-major order and (cyclically shifted) window order.

    `forward[k]` is the row-major index of the k-th token in window order, so gathering with it
    does the roll by (-shift, -shift) and the window partition in one copy; `inverse` undoes both.
    Built outside inference mode even when first asked for inside it: the cache outlives the call,
    and an inference tensor would break a later training step on the same grid in this process.
    """
    with torch.inference_mode(False):
        rows = (torch.arange(h) + shift) % h
        cols = (torch.arange(w) + shift) % w
        grid = rows[:, None] * w + cols[None, :]  # token at shifted position (i, j)
        forward = grid.view(h // window, window, w // window, window).transpose(1, 2).reshape(-1)
        return forward, torch.argsort(forward)


def to_windows(x: torch.Tensor, grid_hw: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(B, H*W, C) row-major -> (B * nW, window^2, C)."""
    forward, _ = window_order(*grid_hw, window, shift)
    return x.index_select(1, forward.to(x.device)).view(-1, window * window, x.shape[-1])


def from_windows(windows: torch.Tensor, batch: int, grid_hw: tuple[int, int], window: int, shift: int) -> torch.Tensor:
    """(B * nW, window^2, C) -> (B, H*W, C) row-major."""
    _, inverse = window_order(*grid_hw, window, shift)
    return windows.reshape(batch, -1, windows.shape[-1]).index_select(1, inverse.to(windows.device))


class Block(nn.Module):
    """Pre-norm transformer block: windowed (optionally shifted) attention, then a token MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, grid_hw: tuple[int, int], bias: torch.Tensor, window: int, shift: int) -> torch.Tensor:
        """x: (B, H*W, C) tokens in row-major grid order."""
        y = to_windows(self.norm1(x), grid_hw, window, shift)
        # Cyclic shift with no mask for the wrapped windows, as the reference does.
        x = x + from_windows(self.attn(y, bias), x.shape[0], grid_hw, window, shift)
        return x + self.mlp(self.norm2(x))
