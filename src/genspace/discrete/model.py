"""A trainable language model on one Transformer backbone: masked diffusion, SEDD, block diffusion
or autoregressive, chosen by ``objective``.

This is the piece the trainer sees (the family protocol of :mod:`genspace.train`):
``losses(batch, *, phase, generator)`` returns unreduced per-sequence terms, ``sample(n, ...)``
draws token sequences with any sampler that fits the objective, ``log_likelihood(x)`` scores
sequences (a bound or exact, labelled by ``likelihood_kind``). The network is a
:class:`~genspace.nets.transformer.Transformer` and holds no diffusion logic: the objective picks
its attention mask (bidirectional, block-causal over [x_t ; x0], causal) and its inputs.

=============  =====================================  =====================  ====================
objective      loss (per token, nats)                 samplers               log-likelihood
=============  =====================================  =====================  ====================
``mdlm``       masked NELBO, SUBS (Sahoo et al. 2024)  ancestral,             NELBO: bound
                                                      first-hitting, top-k,
                                                      threshold, semi-ar,
                                                      sedd-euler/tweedie
``sedd``       score entropy (Lou et al. 2024)         as mdlm (absorbing),   score-entropy bound
                                                      sedd-euler/tweedie
``bd3``        block NELBO (Arriola et al. 2025)       block, block-first-    block NELBO: bound
                                                      hitting, block-top-k
                                                      (KV cache)
``ar``         cross-entropy, causal mask              ar (KV cache)          exact
=============  =====================================  =====================  ====================

Tokens: data ids ``0..K−1`` (K = ``n_data_tokens``, EOS/PAD included when the tokenizer has
them), ``mask_id`` explicit (= K for genspace's tokenizers and sources), the network's vocabulary
``vocab_size`` ≥ K + 1. The AR model starts from ``mask_id`` as its start token, so all L tokens
are scored and its output space equals the diffusion models' (the mask has probability 0).

SEDD with absorbing noise uses the factorized parameterization of the score,
s_θ(x_t)_y = α/(1 − α) · p_θ(x0^ℓ = y | x_t) at masked positions (the exact form of the true
ratios; Ou et al. 2024, "Your absorbing discrete diffusion secretly models the conditional
distributions of clean data"), so its network is a SUBS denoiser trained with the score-entropy
loss and every masked-diffusion sampler applies to it. With uniform noise the network outputs
the log-ratios directly and is time-conditioned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
from torch import nn

from genspace.config import register_variant
from genspace.core.random import Generator, rand
from genspace.discrete.processes import AbsorbingProcess, UniformProcess
from genspace.discrete.schedules import get_schedule
from genspace.nets.transformer import Transformer, TransformerConfig

OBJECTIVES = ("mdlm", "sedd", "bd3", "ar")
MASKED_METHODS = ("ancestral", "first-hitting", "top-k", "threshold", "semi-ar")
SEDD_METHODS = ("sedd-euler", "sedd-tweedie")
BLOCK_METHODS = ("block", "block-first-hitting", "block-top-k")  # BD3-LM's ancestral steps per block; first-hitting / top-k within blocks


@dataclass
class TextNetConfig:
    """The Transformer backbone (vocabulary and context length come from the data)."""

    dim: int = 128  # model width
    depth: int = 4  # Transformer blocks
    n_heads: int = 4  # attention heads (head width dim / n_heads must be even: RoPE)
    mlp_ratio: float = 4.0  # SwiGLU width relative to a GELU MLP of ratio mlp_ratio
    dropout: float = 0.0  # attention and residual dropout
    tie_embeddings: bool = False  # share the output head with the token embedding


@register_variant("model", "text")
@dataclass
class TextModelConfig:
    """A language model of the discrete design space (see the module table)."""

    objective: Literal["mdlm", "sedd", "bd3", "ar"] = "mdlm"  # what is trained (module table)
    process: Literal["absorbing", "uniform"] = "absorbing"  # token noise; uniform only with sedd
    schedule: str = "linear"  # α(t): linear, log-linear, cosine, poly-<k> (genspace.discrete.schedules)
    block_size: int = 16  # bd3: tokens per block (1: autoregressive)
    clip: tuple[float, float] = (0.0, 1.0)  # bd3: noise window t ~ U[β, ω] (BD3-LM's clipped schedule; (0, 1): the NELBO)
    t_min: float = 1e-3  # lower end of the training time window (MDLM/BD3: the variance floor; SEDD: its ε)
    time_conditioning: Optional[bool] = None  # adaLN on t; None: on only for SEDD with uniform noise (MDLM needs none)
    prompt_length: int = 0  # conditional training: the first P tokens are a prompt, never noised and not scored (LLaDA SFT)
    prompt_dropout: float = 0.1  # with prompt_length > 0: p(noise the prompt like the rest), the unconditional branch of CFG
    nelbo_points: int = 16  # t-points per sequence of the NELBO estimate of log_likelihood()
    net: TextNetConfig = field(default_factory=TextNetConfig)  # the backbone

    def __post_init__(self) -> None:
        if self.process == "uniform" and self.objective != "sedd":
            raise ValueError(f"process='uniform' needs objective='sedd' (the masked objectives need the absorbing process), got objective={self.objective!r}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")
        lo, hi = self.clip
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"clip must be a window 0 <= β <= ω <= 1, got {self.clip}")
        if not 0.0 < self.t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")
        if self.prompt_length < 0:
            raise ValueError(f"prompt_length must be >= 0, got {self.prompt_length}")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.nelbo_points < 1:
            raise ValueError(f"nelbo_points must be >= 1, got {self.nelbo_points}")
        get_schedule(self.schedule)  # a bad name fails here, naming the choices


class TextModel(nn.Module):
    """Transformer + objective, trained by the shared trainer.

    Args:
        net: a :class:`~genspace.nets.transformer.Transformer` with ``vocab_size`` ≥ K + 1.
        objective: ``mdlm``, ``sedd``, ``bd3`` or ``ar``.
        n_data_tokens: K, the number of ids a clean sequence can hold.
        mask_id: the mask (and AR start) token id.
        process: ``absorbing`` or ``uniform`` (SEDD only).
        schedule: α(t) by name.
        block_size, clip, t_min, prompt_length, prompt_dropout, nelbo_points: see
            :class:`TextModelConfig`.
        eos_id, pad_id: the tokenizer's EOS and PAD ids (None if it has none): sampling stops a
            sequence at EOS and pads after it where the sampler supports it.
    """

    def __init__(
        self,
        net: Transformer,
        objective: str = "mdlm",
        *,
        n_data_tokens: int,
        mask_id: int,
        process: str = "absorbing",
        schedule: str = "linear",
        block_size: int = 16,
        clip: tuple[float, float] = (0.0, 1.0),
        t_min: float = 1e-3,
        prompt_length: int = 0,
        prompt_dropout: float = 0.1,
        nelbo_points: int = 16,
        eos_id: Optional[int] = None,
        pad_id: Optional[int] = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {list(OBJECTIVES)}")
        if net.config.vocab_size <= mask_id or mask_id < n_data_tokens:
            raise ValueError(f"need n_data_tokens={n_data_tokens} <= mask_id={mask_id} < net vocab_size={net.config.vocab_size}")
        self.net, self.objective = net, objective
        self.n_data_tokens, self.mask_id, self.eos_id, self.pad_id = int(n_data_tokens), int(mask_id), eos_id, pad_id
        self.schedule = get_schedule(schedule)
        self.process_kind = process
        self.process = AbsorbingProcess(self.n_data_tokens, self.mask_id) if process == "absorbing" else UniformProcess(self.n_data_tokens)
        self.block_size, self.clip, self.t_min = int(block_size), tuple(clip), float(t_min)
        self.prompt_length, self.prompt_dropout, self.nelbo_points = int(prompt_length), float(prompt_dropout), int(nelbo_points)
        self.likelihood_kind = "exact" if objective == "ar" else "bound"

    # ------------------------------------------------------------------ model functions

    def logits_fn(self):
        """``(x_t, t) -> (B, L, V)`` raw logits of the bidirectional (masked-diffusion) call."""
        from genspace.discrete.objectives import masked_logits_fn

        return masked_logits_fn(self.net)

    def log_probs_fn(self):
        """``(x_t, t) -> (B, L, V)`` SUBS log-probabilities: the model function of the masked samplers."""
        from genspace.discrete.objectives import subs_log_probs_fn

        if self.objective not in ("mdlm", "sedd") or self.process_kind != "absorbing":
            raise ValueError(f"objective={self.objective!r} (process {self.process_kind!r}) has no masked-diffusion denoiser; its samplers are {self.methods()}")
        return subs_log_probs_fn(self.logits_fn(), self.mask_id)

    def score_fn(self):
        """``(x_t, t) -> (B, L, V)`` SEDD log-ratios log s_θ(x_t, t)_y (module doc)."""
        if self.process_kind == "uniform":
            net = self.net
            return lambda x_t, t: net(x_t, t, attn_mask="bidirectional")
        from genspace.discrete.sedd import score_from_log_probs

        lp, schedule, mask_id = self.log_probs_fn(), self.schedule, self.mask_id
        return lambda x_t, t: score_from_log_probs(lp(x_t, t), x_t, t, mask_id=mask_id, schedule=schedule)

    def methods(self) -> list[str]:
        """The samplers that apply to this model."""
        if self.objective == "ar":
            return ["ar"]
        if self.objective == "bd3":
            return list(BLOCK_METHODS)
        if self.process_kind == "uniform":
            return list(SEDD_METHODS)
        return list(MASKED_METHODS + SEDD_METHODS)

    # ------------------------------------------------------------------ training

    def _keep(self, x0: torch.Tensor, generator: Generator) -> Optional[torch.Tensor]:
        """(B, L) bool prompt mask (never noised, not scored), dropped per sequence w.p. prompt_dropout."""
        if self.prompt_length == 0:
            return None
        keep = torch.arange(x0.shape[1], device=x0.device).expand_as(x0) < self.prompt_length
        if self.training and self.prompt_dropout > 0:
            drop = rand((x0.shape[0],), generator=generator, device=x0.device) < self.prompt_dropout
            keep = keep & ~drop[:, None]
        return keep

    def losses(self, batch, *, phase: str = "main", generator: Generator = None) -> dict[str, torch.Tensor]:
        """Per-sequence loss in nats per token (B,) for a batch (tokens,) or (tokens, valid)."""
        from genspace.discrete import objectives as obj

        x0 = batch[0]
        valid = batch[1].bool() if len(batch) > 1 else None
        keep = self._keep(x0, generator)
        length = x0.shape[1]
        if self.objective == "mdlm":
            r = obj.masked_nelbo(self.logits_fn(), x0, process=self.process, schedule=self.schedule, generator=generator, t_min=self.t_min, valid=valid, keep=keep)
        elif self.objective == "bd3":
            r = obj.block_nelbo(obj.bd3_logits_fn(self.net, self.block_size), x0, block_size=self.block_size, process=self.process, schedule=self.schedule, generator=generator, clip=self.clip, t_min=self.t_min, valid=valid, keep=keep)
        elif self.objective == "ar":
            r = obj.ar_nll(obj.causal_logits_fn(self.net), x0, start_id=self.mask_id, valid=valid, keep=keep)
        else:
            from genspace.discrete.sedd import sedd_loss

            if valid is not None:
                raise ValueError("objective='sedd' does not support padded data (a valid mask); use data.text_mode=pack")
            nll = sedd_loss(self.score_fn(), x0, process=self.process, schedule=self.schedule, generator=generator, eps=self.t_min, keep=keep)
            return {"score_entropy": nll / length}
        return {self.objective: r.nll / length}

    # ------------------------------------------------------------------ likelihood

    @torch.no_grad()
    def likelihood(self, x: torch.Tensor, *, n_t: Optional[int] = None, generator: Generator = None) -> dict:
        """Per-sequence NLL of token sequences (B, L), nats, with its estimator's label.

        Returns {"nll" (B,) float64 nats per sequence, "stderr" (B,), "n_tokens" (B,),
        "estimator" str, "kind" "exact" | "bound"}: AR exact; MDLM and BD3 the unbiased NELBO
        estimate of :func:`genspace.discrete.likelihood.nelbo` (``n_t`` stratified t-points,
        float64); SEDD the Monte-Carlo score-entropy bound (+ the prior term).
        """
        from genspace.discrete import likelihood as lik
        from genspace.discrete import objectives as obj

        n_t = self.nelbo_points if n_t is None else int(n_t)
        was = self.training
        self.eval()
        try:
            if self.objective == "ar":
                r = lik.ar_likelihood(obj.causal_logits_fn(self.net), x, start_id=self.mask_id)
            elif self.objective == "bd3":
                r = lik.nelbo(obj.bd3_logits_fn(self.net, self.block_size), x, schedule=self.schedule, process=self.process, n_t=n_t, generator=generator, block_size=self.block_size)
            elif self.objective == "mdlm":
                r = lik.nelbo(self.logits_fn(), x, schedule=self.schedule, process=self.process, n_t=n_t, generator=generator)
            else:
                return self._sedd_likelihood(x, n_t, generator)
        finally:
            self.train(was)
        return {"nll": r.per_sequence, "stderr": r.stderr, "n_tokens": r.n_tokens, "estimator": r.estimator, "kind": "bound" if r.is_bound else "exact"}

    def _sedd_likelihood(self, x: torch.Tensor, n_t: int, generator: Generator) -> dict:
        from genspace.discrete.sedd import prior_kl, sedd_loss

        draws = torch.stack([sedd_loss(self.score_fn(), x, process=self.process, schedule=self.schedule, generator=generator, eps=self.t_min).double() for _ in range(n_t)])  # (n_t, B)
        nll = draws.mean(0)
        stderr = draws.std(0) / math.sqrt(n_t) if n_t > 1 else torch.full_like(nll, float("nan"))
        est = f"SEDD score-entropy bound, {n_t} antithetic t-draws per sequence over [{self.t_min:g}, 1], float64"
        if self.process_kind == "uniform":
            nll = nll + prior_kl(x, process=self.process, schedule=self.schedule).to(draws)
            est += ", + prior KL"
        else:
            # With α(1) > 0 (log-linear) a token survives to t = 1, which the all-mask start cannot
            # produce: the exact prior term is +inf. SEDD (and MDLM) omit it; so does this estimate.
            est += ", prior term at t = 1 omitted (SEDD/MDLM convention)"
        return {"nll": nll, "stderr": stderr, "n_tokens": torch.full_like(nll, x.shape[1]), "estimator": est, "kind": "bound"}

    def log_likelihood(self, x: torch.Tensor, *, generator: Generator = None) -> torch.Tensor:
        """(B,) log-likelihood in nats: exact (AR) or minus the NELBO / score-entropy bound."""
        return -self.likelihood(x, generator=generator)["nll"]

    # ------------------------------------------------------------------ sampling

    @torch.no_grad()
    def sample_with_info(
        self,
        n: int,
        *,
        length: int,
        generator: Generator = None,
        method: Optional[str] = None,
        steps: Optional[int] = None,
        temperature: float = 1.0,
        prompt: Optional[torch.Tensor] = None,
        template: Optional[torch.Tensor] = None,
        guidance: float = 1.0,
        **options,
    ) -> tuple[torch.Tensor, dict]:
        """``n`` sequences of ``length`` tokens and the sampler's info (NFE, tokens/s, ...).

        Args:
            method: a name of :meth:`methods` (default: the first).
            steps: denoising steps (masked samplers: the sampler's steps; ``block``: steps per
                block; ``sedd-*``: Euler/Tweedie steps); None: ``length``.
            prompt: (P,) token ids that start every sequence (never changed by the sampler).
            template: (L,) or (n, L) ids with ``mask_id`` where tokens are to be generated and
                fixed tokens elsewhere: infilling (masked-diffusion and SEDD samplers only;
                exclusive with ``prompt``).
            guidance: classifier-free guidance scale w of the masked samplers (LLaDA convention
                (1 + w)·ℓ_c − w·ℓ_u, the unconditional branch with the prompt masked); 0: none.
            **options: further options of the sampler (e.g. ``order``, ``threshold``,
                ``block_length``).
        """
        from genspace.discrete.block import sample_ar, sample_block_diffusion
        from genspace.discrete.samplers import classifier_free_guidance, sample_tokens

        allowed = self.methods()
        method = method or allowed[0]
        if method not in allowed:
            raise ValueError(f"method {method!r} does not apply to a {self.objective} model; choose one of {allowed}")
        if length > self.net.config.max_len:
            raise ValueError(f"length {length} exceeds the model's context of {self.net.config.max_len} tokens")
        device = next(self.parameters()).device
        if prompt is not None:
            prompt = torch.as_tensor(prompt, dtype=torch.long, device=device).reshape(-1)
            if len(prompt) >= length:
                raise ValueError(f"the prompt has {len(prompt)} tokens, but sequences have {length}: nothing is left to generate")
            if int(prompt.min()) < 0 or int(prompt.max()) >= self.n_data_tokens:
                raise ValueError(f"prompt ids must be data tokens in 0..{self.n_data_tokens - 1}")
        if template is not None:
            if prompt is not None:
                raise ValueError("give a prompt or a template, not both")
            if method in ("ar", *BLOCK_METHODS):
                raise ValueError(f"infilling needs a bidirectional sampler; {method!r} generates left to right (use prompt=)")
            template = torch.as_tensor(template, dtype=torch.long, device=device)
            template = template.expand(n, -1) if template.ndim == 1 else template
            if template.shape != (n, length):
                raise ValueError(f"template must have shape ({length},) or ({n}, {length}), got {tuple(template.shape)}")
            fixed = template[template != self.mask_id]
            if fixed.numel() and (int(fixed.min()) < 0 or int(fixed.max()) >= self.n_data_tokens):
                raise ValueError(f"template ids must be data tokens in 0..{self.n_data_tokens - 1} or the mask id {self.mask_id}")
        steps = length if steps is None else int(steps)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance not in (0.0, 1.0) and method in ("ar", *BLOCK_METHODS):
            raise ValueError(f"guidance is for the masked-diffusion samplers, not {method!r}")
        was = self.training
        self.eval()
        try:
            if method == "ar":
                return sample_ar(self.net, n, length, start_id=self.mask_id, generator=generator, temperature=temperature, prompt=prompt, eos_id=self.eos_id, pad_id=self.pad_id, **options)
            if method in BLOCK_METHODS:
                if method != "block":
                    options["sampler"] = method.removeprefix("block-")
                return sample_block_diffusion(self.net, n, length, self.block_size, mask_id=self.mask_id, steps_per_block=steps, generator=generator, schedule=self.schedule, temperature=temperature, prompt=prompt, eos_id=self.eos_id, pad_id=self.pad_id, **options)
            x_init = torch.full((n, length), self.mask_id, dtype=torch.long, device=device) if template is None else template.clone()
            if prompt is not None:
                x_init[:, : len(prompt)] = prompt
            if method in SEDD_METHODS:
                if guidance not in (0.0, 1.0):
                    raise ValueError("guidance is not implemented for the SEDD samplers")
                return sample_tokens(method, self.score_fn(), x_init, process=self.process, steps=steps, schedule=self.schedule, generator=generator, mask_id=self.mask_id, **options)
            fn = self.log_probs_fn()
            if guidance not in (0.0, 1.0):
                if prompt is None and template is None:
                    raise ValueError("classifier-free guidance needs a prompt or a template (its unconditional branch masks the fixed tokens)")
                fn = classifier_free_guidance(fn, scale=guidance, mask_id=self.mask_id, prompt_mask=x_init != self.mask_id)
            kwargs = dict(mask_id=self.mask_id, generator=generator, temperature=temperature, vocab_size=self.net.config.vocab_size)
            if method in ("ancestral", "top-k", "semi-ar"):
                kwargs["steps"] = steps
            if method in ("ancestral", "top-k", "threshold", "semi-ar", "first-hitting"):
                kwargs["schedule"] = self.schedule
            if method == "ancestral":
                kwargs["time_independent"] = not self.net.config.time_conditioning
            if method == "semi-ar":
                kwargs.setdefault("block_length", options.pop("block_length", max(1, length // 4)))
            return sample_tokens(method, fn, x_init, **kwargs, **options)
        finally:
            self.train(was)

    def sample(self, n: int, *, shape=None, generator: Generator = None, method: Optional[str] = None, nfe: Optional[int] = None, temperature: float = 1.0, prompt=None, guidance: float = 1.0, **ignored) -> torch.Tensor:
        """(n, L) token ids (the family protocol; ``nfe`` is the number of steps, ``shape`` = (L,))."""
        if shape is None or len(shape) != 1:
            raise ValueError(f"text samples need shape=(length,), got {shape}")
        tokens, _ = self.sample_with_info(n, length=int(shape[0]), generator=generator, method=method, steps=nfe, temperature=temperature, prompt=prompt, guidance=guidance)
        return tokens


def build_text_model(cfg: TextModelConfig, data) -> TextModel:
    """The text model of ``cfg`` for token data (``data.kind == "tokens"``, ``data.tokenizer``)."""
    if getattr(data, "kind", None) != "tokens":
        raise ValueError(f"model.family=text needs token data (data.name = markov, copy, reverse, brackets, text or hf), got {getattr(data, 'kind', None)} data")
    tok = data.tokenizer
    length = int(data.shape[0])
    if cfg.objective == "bd3" and length % cfg.block_size:
        raise ValueError(f"bd3: the sequence length {length} must be a multiple of block_size={cfg.block_size}")
    if cfg.prompt_length >= length:
        raise ValueError(f"prompt_length={cfg.prompt_length} must be shorter than the sequences ({length} tokens)")
    time_conditioning = cfg.time_conditioning if cfg.time_conditioning is not None else (cfg.objective == "sedd" and cfg.process == "uniform")
    net_cfg = TransformerConfig(
        vocab_size=int(tok.vocab_size), dim=cfg.net.dim, depth=cfg.net.depth, n_heads=cfg.net.n_heads,
        mlp_ratio=cfg.net.mlp_ratio, max_len=length, time_conditioning=time_conditioning,
        dropout=cfg.net.dropout, tie_embeddings=cfg.net.tie_embeddings,
    )
    return TextModel(
        Transformer(net_cfg), cfg.objective, n_data_tokens=int(tok.n_data_tokens), mask_id=int(tok.mask_id),
        process=cfg.process, schedule=cfg.schedule, block_size=cfg.block_size, clip=cfg.clip, t_min=cfg.t_min,
        prompt_length=cfg.prompt_length, prompt_dropout=cfg.prompt_dropout, nelbo_points=cfg.nelbo_points,
        eos_id=getattr(tok, "eos_id", None), pad_id=getattr(tok, "pad_id", None),
    )


FAMILY_BUILDERS = {TextModelConfig: build_text_model}
