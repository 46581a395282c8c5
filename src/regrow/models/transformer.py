"""A small decoder-only transformer (GPT) over characters: the language-model task's model.

Pre-norm blocks (LayerNorm → causal self-attention → residual, LayerNorm → MLP → residual),
attention through :func:`torch.nn.functional.scaled_dot_product_attention` (written out in the
cached decode step, where that kernel is slow on a CPU), learned positions, and
an output head tied to the token embedding or not. The input is ``[batch, time]`` token ids
(``input_dtype``), the output ``[batch, time, vocabulary]`` logits. :meth:`CharGPT.decode` gives
the same logits a few tokens at a time with a key/value cache (:meth:`CharGPT.new_cache`).

What is sparse by default: the query, key, value, attention-output and MLP weights (every
``nn.Linear`` of a block). The model names its output head in ``default_dense_layers``, which the
allocation plan keeps dense instead of the first layer it keeps for CNNs; embeddings, norms and
biases are never candidates.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["CausalAttention", "CharGPT", "ScaledDotProduct", "char_gpt", "char_gpt_large"]


class ScaledDotProduct(nn.Module):
    """Causal softmax(q kᵀ / √d) v over ``[batch, heads, time, head_dim]`` tensors.

    A module of its own (no parameters) so the FLOP counter sees the two weightless matmuls
    through :meth:`flop_matmuls`.
    """

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    @staticmethod
    def flop_matmuls(inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> list[tuple]:
        """``(label, fan_in, outputs per sample)`` of q kᵀ (``scores``: each of the
        heads × T × T scores is a dot product over head_dim) and of the scores times v (``mix``:
        each of the heads × T × head_dim outputs sums over T); the full T × T, as the kernel
        computes it."""
        heads, time, head_dim = inputs[0].shape[1:]
        return [("scores", head_dim, heads * time * time), ("mix", time, heads * time * head_dim)]


class CausalAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.sdpa = ScaledDotProduct()
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` → ``[B, heads, T, C / heads]``."""
        batch, time, width = t.shape
        return t.view(batch, time, self.heads, width // self.heads).transpose(1, 2)

    def _merge(self, mixed: torch.Tensor) -> torch.Tensor:
        """``[B, heads, T, C / heads]`` → ``[B, T, C]``, through the output projection."""
        batch, heads, time, head_dim = mixed.shape
        return self.out(mixed.transpose(1, 2).reshape(batch, time, heads * head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        return self.dropout(self._merge(self.sdpa(q, k, v)))

    def decode(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int
    ) -> torch.Tensor:
        """Attention of the new positions ``x`` (``[B, T, C]``) over the ``position`` cached
        ones and themselves (causal); writes their keys and values into ``keys`` / ``values``
        (each ``[B, heads, max_time, C / heads]``) at ``position`` … ``position + T - 1``."""
        time = x.shape[1]
        end = position + time
        keys.narrow(2, position, time).copy_(self._split(self.key(x)))
        values.narrow(2, position, time).copy_(self._split(self.value(x)))
        # New token i (at position + i) sees cached and new positions up to its own.
        allowed = x.new_ones((time, end), dtype=torch.bool).tril(position)
        q = self._split(self.query(x))
        past = keys.narrow(2, 0, end), values.narrow(2, 0, end)
        return self._merge(self.cached_attention(q, *past, allowed))

    @staticmethod
    def cached_attention(
        q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, allowed: torch.Tensor
    ) -> torch.Tensor:
        """Softmax attention of ``q`` over the cached ``keys`` / ``values`` where ``allowed``.
        Written out rather than ``F.scaled_dot_product_attention``: for a few new tokens over a
        cache its CPU kernel costs about 150 µs a call at GPT-2-small size (12 a step), where
        these ops, which ``torch.compile`` fuses, cost a fraction (a 12-block decode step 5 ms
        faster compiled, dense or sparse; docs/EXPORT.md)."""
        scores = (q @ keys.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        scores = scores.masked_fill(allowed.logical_not(), float("-inf"))
        return torch.softmax(scores, -1) @ values


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = CausalAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, hidden)
        self.proj = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.dropout(self.proj(F.gelu(self.fc(self.norm2(x)))))

    def decode(
        self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, position: int
    ) -> torch.Tensor:
        x = x + self.attn.decode(self.norm1(x), keys, values, position)
        return x + self.proj(F.gelu(self.fc(self.norm2(x))))


class CharGPT(nn.Module):
    """Token + learned position embedding → ``layers`` pre-norm blocks → LayerNorm → head.

    ``width`` scales the model dimension (kept a multiple of ``heads``) and the MLP's hidden
    size (4× the model dimension), for Small-Dense; ``tied`` shares the head's weight with the
    token embedding. Initialisation as GPT-2: N(0, 0.02) weights, zero biases, residual
    projections scaled by 1/√(2·layers).
    """

    input_dtype = torch.long
    default_dense_layers = ("head",)

    def __init__(
        self,
        num_classes: int,
        width: float = 1.0,
        *,
        block_size: int = 256,
        d_model: int = 128,
        layers: int = 4,
        heads: int = 4,
        dropout: float = 0.0,
        tied: bool = False,
    ) -> None:
        super().__init__()
        d_model = max(heads, heads * round(d_model * width / heads))
        self.block_size, self.d_model = block_size, d_model
        self.tokens = nn.Embedding(num_classes, d_model)
        self.positions = nn.Embedding(block_size, d_model)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(d_model, heads, 4 * d_model, dropout) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, num_classes, bias=False)
        self.apply(self._init)
        for block in self.blocks:
            for residual in (block.attn.out, block.proj):
                nn.init.normal_(residual.weight, std=0.02 / math.sqrt(2 * layers))
        if tied:
            self.head.weight = self.tokens.weight

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        time = tokens.shape[1]
        self._check_length(time)
        positions = torch.arange(time, device=tokens.device)
        x = self.dropout(self.tokens(tokens) + self.positions(positions))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))

    def _check_length(self, end: object) -> None:
        # A traced length (torch.fx) is no int: the check is left to the position embedding.
        if isinstance(end, int) and end > self.block_size:
            raise ValueError(
                f"a sequence of {end} tokens is longer than the model's block_size "
                f"{self.block_size}: crop the context to the last {self.block_size} tokens."
            )

    @property
    def vocab_size(self) -> int:
        return self.tokens.num_embeddings

    def new_cache(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """An empty key/value cache for :meth:`decode`: per block its keys, then its values, each
        a ``[batch, heads, block_size, head_dim]`` tensor of zeros on the model's device and in
        its dtype. Separate tensors, so that a compiled step writes each in place: with one
        tensor per block (or for all blocks), ``torch.compile`` copies the whole of it at every
        step (0.5 ms of a 12-layer model's decode step per block on this repository's CPU)."""
        attention = self.blocks[0].attn
        weight = attention.key.weight
        shape = (batch, attention.heads, self.block_size, self.d_model // attention.heads)
        return tuple(weight.new_zeros(shape) for _ in range(2 * len(self.blocks)))

    def decode(
        self, tokens: torch.Tensor, cache: tuple[torch.Tensor, ...], position: int
    ) -> torch.Tensor:
        """Logits (``[B, T, vocabulary]``) of ``tokens`` (``[B, T]``) that follow the
        ``position`` tokens whose keys and values ``cache`` (:meth:`new_cache`) holds, as
        :meth:`forward` of the whole sequence would give them; writes their keys and values
        into ``cache``. Decoding one token per call (``T = 1``) reads each weight once per
        token and never recomputes the context. Inference only (no dropout)."""
        time = tokens.shape[1]
        self._check_length(position + time)
        positions = torch.arange(position, position + time, device=tokens.device)
        x = self.tokens(tokens) + self.positions(positions)
        for index, block in enumerate(self.blocks):
            x = block.decode(x, cache[2 * index], cache[2 * index + 1], position)
        return self.head(self.norm(x))


def char_gpt(num_classes: int = 128, width: float = 1.0, block_size: int = 256) -> CharGPT:
    """The CPU size: 2 blocks, d_model 128, 4 heads (393,216 weights in its blocks; a step of
    32 windows of 64 characters takes about 0.2 s on two CPU cores)."""
    return CharGPT(num_classes, width, block_size=block_size, d_model=128, layers=2, heads=4)


def char_gpt_large(num_classes: int = 128, width: float = 1.0, block_size: int = 1024) -> CharGPT:
    """About GPT-2 small: 12 blocks, d_model 768, 12 heads (85 M weights in its blocks), for a
    GPU."""
    return CharGPT(num_classes, width, block_size=block_size, d_model=768, layers=12, heads=12)
