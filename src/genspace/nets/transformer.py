"""A pre-norm Transformer over token sequences, with switchable attention masks and a KV cache.

``Transformer(config)(tokens, t=None, *, positions=None, attn_mask="bidirectional",
block_size=None, cache=None, commit=None, output_slice=None) -> logits (B, N, V)``.

Architecture only (no diffusion or training logic); the pieces are the usual modern ones:

- **Token embedding** (V, D) and an output head D → V (optionally tied to the embedding).
- **Rotary positions** (RoPE, Su et al. 2021, eq. 34): the queries and keys of each head are
  rotated by angles ``p·θ_i``, θ_i = base^(−2i/d_h), with the *explicit* position id p of each
  token, so that q_p·k_p' depends on p − p' only. Position ids are an input (default
  0..N−1, continued after the cache), which lets two streams share positions: the BD3-LM training
  layout [x_t ; x_0] gives both halves the ids 0..L−1.
- **RMSNorm** (Zhang & Sennrich 2019) before attention and MLP (pre-norm), and before the head.
- **SwiGLU MLP** (Shazeer 2020): W₂(SiLU(W₁ x) ⊙ W₃ x), hidden width ⌊2/3 · mlp_ratio · D⌋
  (LLaMA's choice: the parameter count of a two-matrix MLP of ratio ``mlp_ratio``).
- **Multi-head attention** through :func:`torch.nn.functional.scaled_dot_product_attention`
  with an explicit mask, chosen per call (see :func:`attention_mask`):

  ==================  ================================================================
  ``attn_mask``       query at position p may attend to the key at position p′ iff
  ==================  ================================================================
  "bidirectional"     always (no mask)
  "causal"            p′ ≤ p
  "block-causal"      ⌊p′/b⌋ ≤ ⌊p/b⌋ (b = ``block_size``): bidirectional within a block
  a tensor            bool (N, N_k) or (B, N, N_k), True = may attend; or a float additive mask
  ==================  ================================================================

  The string masks are functions of the position ids (of the queries and of the keys, the
  cached keys included), so they stay right when a call continues a cache. An explicit tensor
  serves layouts that positions cannot express, e.g. the BD3-LM training mask (two streams with
  the same positions, :func:`genspace.discrete.objectives.bd3_attention_mask`). Every query must
  be allowed at least one key (an all-False row gives NaN).
- **Time conditioning** (``time_conditioning=True``): adaLN-Zero (Peebles & Xie 2023, DiT §3.2):
  c = MLP(sinusoidal(time_scale · t)); each block gets (shift, scale, gate) × 2 = Linear(SiLU(c)),
  and the head's norm (shift, scale); all these Linears are zero-initialized, so every block
  starts as the identity. ``t`` is per sequence (B,) or **per token** (B, N) — block diffusion
  gives each block its own t, and the clean stream t = 0. Without time conditioning ``t`` is
  ignored (norms then have a learned gain).

**KV cache** (:class:`KVCache`). With ``cache=`` the call computes the queries, keys and values of
the N new tokens only; the queries attend to [cached keys ; new keys] (the mask is built over
both), and the first ``commit`` new tokens' keys/values (all of them by default) are appended to
the cache afterwards; the others are scratch, overwritten by the next call. So

- causal AR decoding feeds one token per call (``commit`` = all);
- block diffusion runs only the current noisy block against the cached clean blocks
  (``commit=0``), and caches a finished clean block by passing it in front of the next block
  with ``attn_mask="block-causal"`` and ``commit=block_size`` (one call does both);
- ``cache.truncate(n)`` rolls back to the first n cached tokens.

A cached call computes exactly what the uncached call over the whole sequence computes for the new
rows (the same keys for the same tokens, positions and time); the tests check it to float64
precision. The cache is for inference: a call with a cache must run without autograd.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import nn
from torch.nn import functional as F

from genspace.nets.embeddings import NoiseEmbedding

__all__ = ["TransformerConfig", "Transformer", "KVCache", "attention_mask", "rope_angles", "MASK_KINDS"]

MASK_KINDS = ("bidirectional", "causal", "block-causal")


@dataclass
class TransformerConfig:
    """Hyperparameters of :class:`Transformer` (defaults: a small 4-layer model)."""

    vocab_size: int = 256  # V: token ids 0..V−1 in, V logits out (data tokens + specials, e.g. the mask id)
    dim: int = 256  # model width D
    depth: int = 4  # number of Transformer blocks
    n_heads: int = 4  # attention heads; head width D / n_heads must be even (RoPE rotates pairs)
    mlp_ratio: float = 4.0  # SwiGLU hidden width = ⌊2/3 · mlp_ratio · D⌋ (the params of a ratio-4 GELU MLP)
    max_len: int = 1024  # longest sequence with default position ids (0..max_len−1); checked per call
    time_conditioning: bool = False  # adaLN-Zero on t (per sequence (B,) or per token (B, N)); False: t ignored
    dropout: float = 0.0  # dropout on attention weights and on each residual branch (training only)
    tie_embeddings: bool = False  # share the output head's weight with the token embedding
    rope_base: float = 10000.0  # RoPE base: θ_i = base^(−2i/d_h)
    time_features: int = 128  # size of the sinusoidal features of t (even)
    time_scale: float = 1000.0  # t is multiplied by this before the features (t ∈ [0, 1] → [0, 1000])
    norm_eps: float = 1e-6  # RMSNorm ε

    def __post_init__(self) -> None:
        if self.vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {self.vocab_size}")
        if self.dim < 2 or self.depth < 0 or self.max_len < 1:
            raise ValueError(f"need dim >= 2, depth >= 0, max_len >= 1; got {self.dim}, {self.depth}, {self.max_len}")
        if self.n_heads < 1 or self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"n_heads={self.n_heads} must divide dim={self.dim} into heads of even width (RoPE)"
            )
        if not self.mlp_ratio > 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.time_features < 2 or self.time_features % 2:
            raise ValueError(f"time_features must be an even number >= 2, got {self.time_features}")
        if not self.rope_base > 1:
            raise ValueError(f"rope_base must be > 1, got {self.rope_base}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return max(1, int(2 * self.mlp_ratio * self.dim / 3))


# ----------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Per-layer keys and values (and position ids) of the tokens a :class:`Transformer` has seen.

    Keys/values live in preallocated buffers (B, H, capacity, d_h) per layer that grow by doubling,
    so appending does not copy the cache and attention reads a view ``[:, :, :len + N]``. A call
    writes its N new keys after the cached ones; ``commit`` of them become part of the cache (the
    rest is scratch). All sequences of the batch share one length.

    Args:
        capacity: initial number of token slots (0: sized by the first call); only a hint.
    """

    def __init__(self, capacity: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self._capacity_hint = int(capacity)
        self._keys: list[Optional[torch.Tensor]] = []  # per layer (B, H, cap, d_h)
        self._values: list[Optional[torch.Tensor]] = []
        self._positions: Optional[torch.Tensor] = None  # (P, cap) int64, P = 1 (shared) or B
        self._length = 0
        self._pending = 0  # new tokens written after _length by the call in progress

    def __len__(self) -> int:
        return self._length

    @property
    def batch_size(self) -> Optional[int]:
        """B of the cached keys (None before the first call)."""
        k = next((k for k in self._keys if k is not None), None)
        return None if k is None else k.shape[0]

    @property
    def positions(self) -> Optional[torch.Tensor]:
        """(P, len) position ids of the cached tokens (P = 1 when shared by the batch)."""
        return None if self._positions is None else self._positions[:, : self._length]

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (roll back the rest)."""
        if not 0 <= length <= self._length:
            raise ValueError(f"cannot truncate a KV cache of length {self._length} to {length}")
        self._length = int(length)

    def reset(self) -> None:
        """Empty the cache (buffers are kept for reuse)."""
        self._length = 0

    # -- used by Transformer.forward ------------------------------------------------------------
    def _reserve(self, positions: torch.Tensor, n_layers: int) -> torch.Tensor:
        """Write the new tokens' positions (P, N) as scratch; return the key positions (P', len + N)."""
        n = positions.shape[1]
        need = self._length + n
        if len(self._keys) != n_layers:
            if self._length:
                raise ValueError(f"this KV cache holds {len(self._keys)} layers, the network has {n_layers}")
            self._keys, self._values = [None] * n_layers, [None] * n_layers
        old = self._positions
        if old is None or old.shape[1] < need or (old.shape[0] != positions.shape[0] and old.shape[0] == 1):
            cap = max(need, self._capacity_hint, 2 * (0 if old is None else old.shape[1]))
            rows = max(positions.shape[0], 0 if old is None else old.shape[0])
            new = torch.zeros(rows, cap, dtype=torch.long, device=positions.device)
            if old is not None and self._length:
                new[:, : self._length] = old[:, : self._length]
            self._positions = new
        elif old.shape[0] != positions.shape[0] and positions.shape[0] != 1:
            raise ValueError(f"position ids of batch {positions.shape[0]} do not match the cache's {old.shape[0]}")
        self._positions[:, self._length : need] = positions
        self._pending = n
        return self._positions[:, :need]

    def _layer(self, i: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write layer i's new keys/values (B, H, N, d_h); return [cached ; new] views (B, H, len + N, d_h)."""
        n = k.shape[2]
        need = self._length + n
        buf_k, buf_v = self._keys[i], self._values[i]
        if buf_k is not None and (buf_k.shape[0] != k.shape[0] or buf_k.shape[1] != k.shape[1]):
            if self._length:
                raise ValueError(
                    f"KV cache holds a batch of {buf_k.shape[0]} sequences, the call has {k.shape[0]}"
                )
            buf_k = buf_v = None
        if buf_k is None or buf_k.shape[2] < need or buf_k.dtype != k.dtype or buf_k.device != k.device:
            cap = max(need, self._capacity_hint, 2 * (0 if buf_k is None else buf_k.shape[2]))
            new_k = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])  # (B, H, cap, d_h)
            new_v = v.new_empty(v.shape[0], v.shape[1], cap, v.shape[3])
            if buf_k is not None and self._length:
                new_k[:, :, : self._length] = buf_k[:, :, : self._length]
                new_v[:, :, : self._length] = buf_v[:, :, : self._length]
            buf_k, buf_v = new_k, new_v
            self._keys[i], self._values[i] = buf_k, buf_v
        buf_k[:, :, self._length : need] = k
        buf_v[:, :, self._length : need] = v
        return buf_k[:, :, :need], buf_v[:, :, :need]

    def _commit(self, n: int) -> None:
        if not 0 <= n <= self._pending:
            raise ValueError(f"commit must be in [0, {self._pending}] (the new tokens of the call), got {n}")
        self._length += n
        self._pending = 0


# ----------------------------------------------------------------------------------------------
# masks and rotary positions


def attention_mask(
    kind: str, q_positions: torch.Tensor, k_positions: torch.Tensor, block_size: Optional[int] = None
) -> Optional[torch.Tensor]:
    """The boolean attention mask of ``kind`` from position ids (True = may attend).

    Args:
        kind: ``"bidirectional"`` (returns None: no mask), ``"causal"`` (p′ ≤ p) or
            ``"block-causal"`` (⌊p′/b⌋ ≤ ⌊p/b⌋, b = ``block_size``).
        q_positions: (P, N_q) position ids of the queries (P = 1 or B).
        k_positions: (P, N_k) position ids of the keys.

    Returns:
        (P, 1, N_q, N_k) bool (broadcasts over heads), or None.
    """
    if kind == "bidirectional":
        return None
    qp, kp = q_positions[:, :, None], k_positions[:, None, :]  # (P, N_q, 1), (P, 1, N_k)
    if kind == "causal":
        return (kp <= qp)[:, None]  # (P, 1, N_q, N_k)
    if kind == "block-causal":
        if block_size is None or block_size < 1:
            raise ValueError(f"attn_mask='block-causal' needs block_size >= 1, got {block_size}")
        return (torch.div(kp, block_size, rounding_mode="floor") <= torch.div(qp, block_size, rounding_mode="floor"))[:, None]
    raise ValueError(f"unknown attn_mask {kind!r}; choose one of {list(MASK_KINDS)} or pass a mask tensor")


def rope_angles(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the RoPE angles p·θ_i, θ_i = base^(−2i/d_h): (P, N) → 2 × (P, 1, N, d_h).

    Angles are computed in float64 and cast to ``dtype``; each frequency appears twice (the
    rotate-half layout: component i is paired with component i + d_h/2).
    """
    half = head_dim // 2
    inv_freq = base ** (-torch.arange(half, dtype=torch.float64, device=positions.device) * 2.0 / head_dim)  # (d_h/2,)
    angle = positions.to(torch.float64)[..., None] * inv_freq  # (P, N, d_h/2)
    angle = torch.cat([angle, angle], dim=-1)[:, None]  # (P, 1, N, d_h)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE: x·cos + rotate_half(x)·sin for x (…, B, H, N, d_h); rotate_half(a, b) = (−b, a)."""
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


# ----------------------------------------------------------------------------------------------
# layers


class SelfAttention(nn.Module):
    """Multi-head self-attention with RoPE: (B, N, D) → (B, N, D), optionally over cached keys."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x, cos, sin, mask, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        b, n, d = x.shape
        h = self.n_heads
        qkv = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d_h)
        q, k = _rotate(qkv[:2], cos, sin).unbind(0)  # q and k in one pass: 2 × (B, H, N, d_h)
        v = qkv[2]
        if cache is not None:
            k, v = cache._layer(layer, k, v)  # (B, H, len + N, d_h)
        p = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # (B, H, N, d_h)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))  # (B, N, D)


class SwiGLU(nn.Module):
    """W₂(SiLU(W₁x) ⊙ W₃x): (…, D) → (…, D) (Shazeer 2020)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)  # (…, hidden) each
        return self.w2(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Pre-norm block x ← x + g₁·Attn(norm(x)) ; x ← x + g₂·MLP(norm(x)), adaLN-Zero if conditioned."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        cond = cfg.time_conditioning
        self.norm1 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, elementwise_affine=not cond)
        self.attn = SelfAttention(cfg.dim, cfg.n_heads, cfg.dropout)
        self.norm2 = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, elementwise_affine=not cond)
        self.mlp = SwiGLU(cfg.dim, cfg.mlp_hidden)
        self.adaLN = nn.Linear(cfg.dim, 6 * cfg.dim) if cond else None
        self.drop = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, c, cos, sin, mask, cache, layer) -> torch.Tensor:
        if self.adaLN is None:
            x = x + self.drop(self.attn(self.norm1(x), cos, sin, mask, cache, layer))
            return x + self.drop(self.mlp(self.norm2(x)))
        # c: (B, 1, D) per sequence or (B, N, D) per token → six (B, 1|N, D) modulations
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(F.silu(c)).chunk(6, dim=-1)
        x = x + gate1 * self.drop(self.attn(self.norm1(x) * (1 + scale1) + shift1, cos, sin, mask, cache, layer))
        return x + gate2 * self.drop(self.mlp(self.norm2(x) * (1 + scale2) + shift2))


# ----------------------------------------------------------------------------------------------
# the network


class Transformer(nn.Module):
    """Token Transformer ``(tokens (B, N), t (B,) | (B, N) | None) -> logits (B, N, V)``; see module doc."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise ValueError(f"Transformer needs a TransformerConfig, got {type(config).__name__}")
        self.config = config
        cfg = config
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.time_embed = (
            NoiseEmbedding(cfg.dim, "sinusoidal", cfg.time_features, time_scale=cfg.time_scale)
            if cfg.time_conditioning
            else None
        )
        self.blocks = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps, elementwise_affine=not cfg.time_conditioning)
        self.final_adaLN = nn.Linear(cfg.dim, 2 * cfg.dim) if cfg.time_conditioning else None
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self._rope_tables: dict = {}  # (dtype, device) → RoPE cos/sin of every position (see _rope_table)
        self._init_weights()

    def _init_weights(self) -> None:
        """N(0, 0.02) embeddings and linears (GPT-2), zero biases; adaLN modulations at zero (DiT)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        for lin in [b.adaLN for b in self.blocks] + [self.final_adaLN]:
            if lin is not None:
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty :class:`KVCache` for this network."""
        return KVCache(capacity)

    def _time(self, t, b: int, n: int) -> Optional[torch.Tensor]:
        """The conditioning vector c: (B, 1, D) for t (B,) or a scalar, (B, N, D) for t (B, N)."""
        if self.time_embed is None:
            return None
        if t is None:
            raise ValueError("this Transformer is time-conditioned (time_conditioning=True): pass t")
        if not torch.is_tensor(t):
            t = torch.tensor(float(t), dtype=torch.float64)  # a Python number: exact in float64
        t = t.to(self.embed.weight.device)
        if not t.is_floating_point():
            t = t.to(torch.float32)
        if t.ndim == 0:
            t = t.expand(b)
        if tuple(t.shape) == (b,):
            return self.time_embed(t)[:, None]  # (B, 1, D)
        if tuple(t.shape) == (b, n):
            return self.time_embed(t.reshape(-1)).view(b, n, -1)  # (B·N,) → (B, N, D)
        raise ValueError(f"t must be a scalar, ({b},) or ({b}, {n}) for tokens of shape ({b}, {n}); got {tuple(t.shape)}")

    def forward(
        self,
        tokens: torch.Tensor,
        t: Union[torch.Tensor, float, None] = None,
        *,
        positions: Optional[torch.Tensor] = None,
        attn_mask: Union[str, torch.Tensor] = "bidirectional",
        block_size: Optional[int] = None,
        cache: Optional[KVCache] = None,
        commit: Optional[int] = None,
        output_slice: Optional[slice] = None,
    ) -> torch.Tensor:
        """Logits (B, N′, V) of the N new tokens (N′ = N, or the length of ``output_slice``).

        Args:
            tokens: (B, N) int64 ids in [0, vocab_size).
            t: time per sequence (B,) (or a scalar) or per token (B, N); required iff the net is
                time-conditioned, ignored otherwise.
            positions: (N,) or (B, N) int64 position ids; default ``len(cache) + 0..N−1``.
            attn_mask: ``"bidirectional"``, ``"causal"``, ``"block-causal"`` (needs
                ``block_size``), or a tensor (N, N_k) / (B, N, N_k), N_k = len(cache) + N: bool
                (True = may attend) or float (added to the attention scores).
            block_size: the block size of ``"block-causal"``.
            cache: a :class:`KVCache`: attend to its keys too, then append the first ``commit``
                new tokens' keys/values (None: all N). Only without autograd.
            output_slice: apply the head to ``tokens[:, output_slice]`` only (saves the head's
                cost when only some rows are needed, e.g. the last one in AR decoding).
        """
        cfg = self.config
        if not torch.is_tensor(tokens) or tokens.ndim != 2 or tokens.is_floating_point() or tokens.dtype == torch.bool:
            shape = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
            raise ValueError(f"tokens must be an integer tensor of shape (B, N), got {shape}")
        b, n = tokens.shape
        if n == 0:
            raise ValueError("tokens must hold at least one position, got N = 0")
        past = 0
        if cache is not None:
            if torch.is_grad_enabled():
                raise ValueError("a KV cache is for inference: call under torch.no_grad() or torch.inference_mode()")
            past = len(cache)
        device = tokens.device
        if positions is None:
            if past + n > cfg.max_len:
                raise ValueError(f"sequence length {past + n} exceeds max_len={cfg.max_len}")
            q_pos = torch.arange(past, past + n, device=device)[None]  # (1, N)
        else:
            q_pos = positions.to(device=device, dtype=torch.long)
            if q_pos.ndim == 1:
                q_pos = q_pos[None]  # (1, N)
            if q_pos.ndim != 2 or q_pos.shape[1] != n or q_pos.shape[0] not in (1, b):
                raise ValueError(f"positions must have shape ({n},) or ({b}, {n}), got {tuple(positions.shape)}")
        k_pos = cache._reserve(q_pos, len(self.blocks)) if cache is not None else q_pos  # (P, len + N)
        mask = self._mask(attn_mask, q_pos, k_pos, block_size, b, n)

        c = self._time(t, b, n)
        h = self.embed(tokens)  # (B, N, D)
        if positions is None:  # contiguous default positions: a view of the table
            cos, sin = self._rope_table(h.dtype, device)
            cos, sin = cos[:, :, past : past + n], sin[:, :, past : past + n]  # (1, 1, N, d_h)
        else:
            cos, sin = rope_angles(q_pos, cfg.head_dim, cfg.rope_base, h.dtype)  # (P, 1, N, d_h)
        for i, block in enumerate(self.blocks):
            h = block(h, c, cos, sin, mask, cache, i)
        if cache is not None:
            cache._commit(n if commit is None else int(commit))
        if output_slice is not None:
            h = h[:, output_slice]  # (B, N′, D)
            if c is not None and c.shape[1] > 1:
                c = c[:, output_slice]
        h = self.norm(h)
        if self.final_adaLN is not None:
            shift, scale = self.final_adaLN(F.silu(c)).chunk(2, dim=-1)  # (B, 1|N′, D) each
            h = h * (1 + scale) + shift
        return self.head(h)  # (B, N′, V)

    def _rope_table(self, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of :func:`rope_angles` for positions 0..max_len−1, (1, 1, max_len, d_h) each,
        computed once per dtype and device (the same float64 angles, so slices of it equal a
        direct computation bit for bit); not part of the state dict."""
        key = (dtype, torch.device(device))
        table = self._rope_tables.get(key)
        if table is None:
            cfg = self.config
            pos = torch.arange(cfg.max_len, device=device)[None]  # (1, max_len)
            table = self._rope_tables[key] = rope_angles(pos, cfg.head_dim, cfg.rope_base, dtype)
        return table

    def _mask(self, attn_mask, q_pos, k_pos, block_size, b: int, n: int) -> Optional[torch.Tensor]:
        if isinstance(attn_mask, str):
            return attention_mask(attn_mask, q_pos, k_pos, block_size)
        if not torch.is_tensor(attn_mask):
            raise ValueError(f"attn_mask must be one of {list(MASK_KINDS)} or a tensor, got {type(attn_mask).__name__}")
        nk = k_pos.shape[1]
        m = attn_mask.to(q_pos.device)
        if m.ndim == 2:
            m = m[None]  # (1, N, N_k)
        if m.ndim != 3 or m.shape[1:] != (n, nk) or m.shape[0] not in (1, b):
            raise ValueError(
                f"attn_mask tensor must have shape ({n}, {nk}) or ({b}, {n}, {nk}) (queries × [cache ; new] keys), "
                f"got {tuple(attn_mask.shape)}"
            )
        if m.dtype != torch.bool and not m.is_floating_point():
            raise ValueError(f"attn_mask tensor must be bool or floating, got {m.dtype}")
        if m.is_floating_point():
            m = m.to(self.embed.weight.dtype)
        return m[:, None]  # (1|B, 1, N, N_k)
