"""Vector quantization of encoder outputs: the bottleneck of VQ-VAE and VQGAN.

van den Oord et al. 2017, "Neural Discrete Representation Learning" (VQ-VAE), §3.1–3.2:

- **nearest-code assignment** (eq. 1–2): code k(z) = argmin_j ‖z − e_j‖², q(z) = e_k(z);
- **straight-through estimator** (§3.2): the decoder sees z_q = z_e + sg[q(z_e) − z_e], whose
  value is q(z_e) and whose gradient w.r.t. z_e is the identity (the decoder's gradient is
  copied to the encoder);
- **codebook loss** ‖sg[z_e] − e‖² (moves the codes, eq. 3 second term) and **commitment loss**
  β‖z_e − sg[e]‖² with β = 0.25 (moves the encoder, eq. 3 third term). Here both are means over
  the D coordinates of a vector (‖·‖²/D, as reference implementations reduce them), so they sit on
  the scale of a per-pixel reconstruction MSE;
- **EMA codebook** (appendix A.1; Razavi et al. 2019, "VQ-VAE-2", eq. 4–6) instead of the
  codebook loss: with n_i the number of vectors of the batch assigned to code i and s_i their sum,

      N_i ← γ N_i + (1 − γ) n_i,     m_i ← γ m_i + (1 − γ) s_i,     e_i = m_i / Ñ_i,

  γ = 0.99, and Ñ_i = (N_i + ε) / (n + K ε) · n (n = Σ_j N_j) the Laplace-smoothed count, which
  keeps the total n and never divides by zero;
- **dead-code restart** (as in Jukebox, Dhariwal et al. 2020, and Łańcucki et al. 2020): a code
  not assigned for ``restart_after`` consecutive training updates (or, with an EMA codebook,
  whose count N_i fell below ``restart_min_count``) is reset to a random encoder output of the
  current batch;
- **k-means initialization** (Łańcucki et al. 2020): the codebook starts as the k-means centres
  of the first training batch of encoder outputs (k-means++ seeding, Arthur & Vassilvitskii
  2007, then a few Lloyd iterations), all randomness from the explicit generator.

All state (codebook, EMA counts and sums, steps unused, whether the init ran) lives in buffers
(the codebook is a parameter when it is learned by the codebook loss), so a safetensors
checkpoint of the model's ``state_dict`` restores it. The quantizer itself is pure:
:meth:`VectorQuantizer.forward` changes nothing; the model calls :meth:`~VectorQuantizer.initialize`
and :meth:`~VectorQuantizer.update` from its ``losses`` in training mode. Under data-parallel
training the counts and sums are summed over ranks and rank 0's k-means centres and restart
vectors are taken by every rank, so the codebooks stay identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from genspace.core.random import Generator, rand
from genspace.train import distributed as gdist

__all__ = ["Quantized", "VectorQuantizer", "kmeans", "kmeans_plusplus", "squared_distances"]

UPDATES = ("ema", "loss")
INITS = ("kmeans", "random")


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """‖z_n − e_k‖² for z (N, D) and codebook (K, D): (N, K), as ‖z‖² − 2 z·e + ‖e‖²."""
    return (z * z).sum(1, keepdim=True) - 2.0 * z @ codebook.t() + (codebook * codebook).sum(1)[None, :]


def _draw_index(weights: torch.Tensor, generator: Generator) -> torch.Tensor:
    """One index drawn with probability ∝ ``weights`` (M,) ≥ 0 (uniform if they are all 0): ()."""
    cdf = torch.cumsum(weights, 0)  # (M,)
    total = cdf[-1]
    u = rand((1,), generator=generator, dtype=weights.dtype, device=weights.device)
    if not total > 0:
        return (u * weights.shape[0]).long().clamp_max(weights.shape[0] - 1)[0]
    return torch.searchsorted(cdf, u * total, right=True).clamp_max(weights.shape[0] - 1)[0]


def kmeans_plusplus(z: torch.Tensor, k: int, generator: Generator = None) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): (k, D) centres chosen among the rows of z (N, D).

    The first centre is uniform over the rows; each next one is drawn with probability
    ∝ D(x)², the squared distance of x to its nearest chosen centre. With fewer distinct rows
    than k the remaining draws are uniform (centres may repeat).
    """
    n = z.shape[0]
    first = _draw_index(torch.ones(n, dtype=z.dtype, device=z.device), generator)
    centres = [z[first]]
    d2 = ((z - z[first]) ** 2).sum(1)  # (N,)
    for _ in range(1, k):
        i = _draw_index(d2.clamp_min(0), generator)
        centres.append(z[i])
        d2 = torch.minimum(d2, ((z - z[i]) ** 2).sum(1))
    return torch.stack(centres)  # (k, D)


def kmeans(z: torch.Tensor, k: int, iters: int = 10, generator: Generator = None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeding then ``iters`` Lloyd iterations on z (N, D).

    Returns (centres (k, D), counts (k,)) with the counts of the final assignment. A centre
    left without points keeps its previous position.
    """
    centres = kmeans_plusplus(z, k, generator)
    counts = torch.zeros(k, dtype=z.dtype, device=z.device)
    for _ in range(iters + 1):
        codes = squared_distances(z, centres).argmin(1)  # (N,)
        counts = torch.bincount(codes, minlength=k).to(z.dtype)  # (k,)
        if _ == iters:
            break
        sums = torch.zeros_like(centres).index_add_(0, codes, z)  # (k, D)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], centres)
    return centres, counts


@dataclass
class Quantized:
    """The output of :meth:`VectorQuantizer.forward` for N vectors of dimension D."""

    z_q: torch.Tensor  # (N, D) straight-through output: value q(z_e), gradient identity to z_e
    codes: torch.Tensor  # (N,) int64 nearest-code indices
    commitment: torch.Tensor  # (N,) β·‖z_e − sg[e]‖²/D (gradient to the encoder only)
    codebook_loss: Optional[torch.Tensor]  # (N,) ‖sg[z_e] − e‖²/D (to the codebook only); None with EMA


class VectorQuantizer(nn.Module):
    """A codebook of K vectors of dimension D with nearest-code assignment (see the module doc).

    Args:
        n_codes: K, the number of codes.
        code_dim: D, the dimension of a code (the encoder's output channels).
        beta: β of the commitment loss (the paper's 0.25).
        update: ``"ema"`` (codebook as EMA of assigned vectors, a buffer) or ``"loss"`` (the
            codebook is a parameter trained by the codebook loss).
        decay: γ of the EMA update.
        epsilon: ε of the Laplace smoothing of the EMA counts.
        init: ``"kmeans"`` (k-means on the first training batch) or ``"random"`` (keep the
            construction-time codebook, uniform in [−1/K, 1/K] as in the paper's reference code).
        kmeans_iters: Lloyd iterations of the k-means initialization.
        restart_after: a code unassigned for this many consecutive updates is restarted; None: off.
        restart_min_count: EMA only: a code whose count N_i is below this is restarted; None: off.
    """

    def __init__(
        self,
        n_codes: int,
        code_dim: int,
        *,
        beta: float = 0.25,
        update: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        init: str = "kmeans",
        kmeans_iters: int = 10,
        restart_after: Optional[int] = 50,
        restart_min_count: Optional[float] = None,
    ) -> None:
        super().__init__()
        for name, v in (("n_codes", n_codes), ("code_dim", code_dim)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if update not in UPDATES:
            raise ValueError(f"update must be one of {UPDATES}, got {update!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        if isinstance(kmeans_iters, bool) or not isinstance(kmeans_iters, int) or kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be an integer >= 0, got {kmeans_iters!r}")
        if restart_after is not None and (not isinstance(restart_after, int) or restart_after < 1):
            raise ValueError(f"restart_after must be a positive integer or None, got {restart_after!r}")
        if restart_min_count is not None and (update != "ema" or not restart_min_count > 0):
            raise ValueError(
                f"restart_min_count must be None or > 0 and needs update='ema', got {restart_min_count!r} "
                f"with update={update!r}"
            )
        self.n_codes, self.code_dim = n_codes, code_dim
        self.beta, self.update_kind, self.decay, self.epsilon = float(beta), update, float(decay), float(epsilon)
        self.init_kind, self.kmeans_iters = init, kmeans_iters
        self.restart_after, self.restart_min_count = restart_after, restart_min_count

        codebook = (2.0 * torch.rand(n_codes, code_dim) - 1.0) / n_codes  # (K, D)
        if update == "loss":
            self.codebook = nn.Parameter(codebook)
        else:
            self.register_buffer("codebook", codebook)
            self.register_buffer("ema_count", torch.ones(n_codes))  # N_i: one pseudo-vector each
            self.register_buffer("ema_sum", codebook.clone())  # m_i = N_i e_i
        self.register_buffer("unused_steps", torch.zeros(n_codes, dtype=torch.long))
        self.register_buffer("initialized", torch.tensor(init == "random"))
        self._initialized_seen = False  # a cache of `initialized` that spares a sync per step

    # ------------------------------------------------------------------ assignment
    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest-code indices (N,) int64 of z (N, D) (eq. 1 of the paper)."""
        dtype = torch.promote_types(z.dtype, self.codebook.dtype)  # fp16/bf16 inputs: distances in fp32
        with torch.no_grad():
            return squared_distances(z.to(dtype), self.codebook.to(dtype)).argmin(1)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """The code vectors e_k of integer codes of any shape (...) → (..., D)."""
        return self.codebook[codes]

    def forward(self, z: torch.Tensor) -> Quantized:
        """Quantize z_e (N, D); changes no state (see :meth:`update`)."""
        if z.ndim != 2 or z.shape[1] != self.code_dim:
            raise ValueError(f"expected encoder outputs of shape (N, {self.code_dim}), got {tuple(z.shape)}")
        codes = self.nearest(z)  # (N,)
        q = self.codebook[codes].to(z.dtype)  # (N, D), differentiable w.r.t. a parameter codebook
        z_q = z + (q - z).detach()  # straight-through: value q, ∂z_q/∂z = I
        commitment = self.beta * ((z - q.detach()) ** 2).mean(1)  # (N,)
        codebook_loss = ((z.detach() - q) ** 2).mean(1) if self.update_kind == "loss" else None
        return Quantized(z_q, codes, commitment, codebook_loss)

    # ------------------------------------------------------------------ training-time state
    @torch.no_grad()
    def initialize(self, z: torch.Tensor, generator: Generator = None) -> bool:
        """k-means initialization from z (N, D) if it has not run yet; True if it ran now."""
        if self._initialized_seen or bool(self.initialized):  # one host sync, then a Python flag
            self._initialized_seen = True
            return False
        z = z.detach().to(self.codebook.dtype)
        centres, counts = kmeans(z, self.n_codes, self.kmeans_iters, generator)
        centres, counts = gdist.all_gather(centres)[0], gdist.all_gather(counts)[0]  # rank 0's
        self.codebook.copy_(centres)
        if self.update_kind == "ema":
            self.ema_count.copy_(counts.clamp_min(1.0))  # a floor of one pseudo-vector per code
            self.ema_sum.copy_(centres * self.ema_count[:, None])
        self.initialized.fill_(True)
        self._initialized_seen = True
        return True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self._initialized_seen = False  # the loaded `initialized` buffer decides again
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def update(self, z: torch.Tensor, codes: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """One training update from the batch z (N, D) and its codes (N,): EMA, then restarts.

        Returns the number of codes restarted (a 0-d tensor).
        """
        z = z.detach().to(self.codebook.dtype)
        world = gdist.world_size()
        n_i = torch.bincount(codes, minlength=self.n_codes).to(z.dtype)  # (K,)
        if world > 1:
            n_i = gdist.all_reduce_mean(n_i) * world
        if self.update_kind == "ema":
            s_i = torch.zeros_like(self.ema_sum).index_add_(0, codes, z)  # (K, D)
            if world > 1:
                s_i = gdist.all_reduce_mean(s_i) * world
            g = self.decay
            self.ema_count.mul_(g).add_(n_i, alpha=1.0 - g)
            self.ema_sum.mul_(g).add_(s_i, alpha=1.0 - g)
            self.codebook.copy_(self.ema_sum / self.smoothed_counts()[:, None])
        self.unused_steps.copy_(torch.where(n_i > 0, torch.zeros_like(self.unused_steps), self.unused_steps + 1))
        return self.restart_dead(z, generator)

    def smoothed_counts(self) -> torch.Tensor:
        """Ñ_i = (N_i + ε) / (n + K ε) · n, n = Σ_j N_j (Laplace smoothing): (K,)."""
        n = self.ema_count.sum()
        return (self.ema_count + self.epsilon) / (n + self.n_codes * self.epsilon) * n

    def dead_codes(self) -> torch.Tensor:
        """Boolean mask (K,) of the codes to restart."""
        dead = torch.zeros(self.n_codes, dtype=torch.bool, device=self.unused_steps.device)
        if self.restart_after is not None:
            dead |= self.unused_steps >= self.restart_after
        if self.restart_min_count is not None:
            dead |= self.ema_count < self.restart_min_count
        return dead

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, generator: Generator = None) -> torch.Tensor:
        """Reset the dead codes to random rows of z (N, D), distinct rows while N ≥ K.

        Branch-free (no host-device synchronisation): a candidate row is drawn for every code
        from one random permutation of the batch, and only the dead codes take theirs. Returns
        the number of codes restarted (a 0-d tensor).
        """
        if self.restart_after is None and self.restart_min_count is None:
            return torch.zeros((), device=z.device)
        dead = self.dead_codes()  # (K,)
        z = z.detach().to(self.codebook.dtype)
        order = torch.argsort(rand((z.shape[0],), generator=generator, device=z.device))  # a random permutation
        picks = order[torch.arange(self.n_codes, device=z.device) % z.shape[0]]  # (K,)
        rows = gdist.all_gather(z[picks])[0]  # (K, D), rank 0's choice
        self.codebook.copy_(torch.where(dead[:, None], rows, self.codebook))
        if self.update_kind == "ema":
            count = max(1.0, self.restart_min_count or 0.0)
            self.ema_count.copy_(torch.where(dead, torch.full_like(self.ema_count, count), self.ema_count))
            self.ema_sum.copy_(torch.where(dead[:, None], rows * count, self.ema_sum))
        self.unused_steps.masked_fill_(dead, 0)
        return dead.sum().to(z.dtype)

    # ------------------------------------------------------------------ diagnostics
    @staticmethod
    def usage(codes: torch.Tensor, n_codes: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes used, perplexity exp(−Σ p_k log p_k)) of a batch of codes, 0-d tensors."""
        p = torch.bincount(codes.reshape(-1), minlength=n_codes).double()
        p = p / p.sum()
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        return (p > 0).sum().double(), torch.exp(entropy)

    def extra_repr(self) -> str:
        return (
            f"n_codes={self.n_codes}, code_dim={self.code_dim}, beta={self.beta}, update={self.update_kind!r}, "
            f"init={self.init_kind!r}, restart_after={self.restart_after}"
        )
