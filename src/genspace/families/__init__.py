"""The classic generative-model families, one file each, on the shared trainer and metrics.

=========  ====================================================================  ==============
file       what it holds                                                         likelihood
=========  ====================================================================  ==============
ar.py      MADE (order / connectivity ensembles), PixelCNN (gated, no blind      exact
           spot), transformer AR (levels / bins as tokens)
vae.py     Gaussian VAE, β-VAE, IWAE bound, importance-sampled test NLL          bound / estimate
gan.py     non-saturating GAN, WGAN (clipping), WGAN-GP                          n/a
flows.py   NICE, RealNVP, Glow parts (ActNorm, invertible 1×1 conv), MAF/IAF,    exact
           rational-quadratic spline coupling
cnf.py     continuous normalizing flow (FFJORD) on the core's ODE likelihood     exact / estimate
vq.py      VQ-VAE (EMA codebook, dead-code restart, k-means init), VQGAN, code   n/a (prior: exact
           prior                                                                 over codes)
=========  ====================================================================  ==============

The family protocol
-------------------
Every model here is an ``nn.Module`` that the model-agnostic :class:`genspace.train.Trainer`
trains (see :mod:`genspace.train` for the full protocol):

``losses(batch, *, phase="main", generator=None) -> dict[str, Tensor]``
    ``batch`` is ``(x,)`` or ``(x, labels)``; every term is UNREDUCED, shape (B,); a term whose
    name starts with ``_`` is logged, not optimized. All randomness from ``generator``.
``phases() -> list[genspace.train.Phase]`` (optional)
    several optimizers on a schedule (a GAN's critic and generator).
``sample(n, *, shape=None, generator=None, class_labels=None, **ignored) -> Tensor``
    ``(n, *shape)`` samples in the data's range; randomness only through
    :func:`genspace.core.random.randn` / :func:`~genspace.core.random.rand` with ``generator``
    (a :class:`~genspace.core.StackedGenerator` gives one seed per sample). Options of other
    families' samplers (``method``, ``nfe``, ``grid``, ...) are accepted and ignored.
``log_likelihood(x, *, generator=None) -> Tensor`` (optional)
    ``(B,)`` log-likelihood in nats (or a lower bound, or an estimate), with the class attribute
    ``likelihood_kind`` one of ``"exact"``, ``"bound"`` (a lower bound on log p), ``"estimate"``
    (a stochastic estimate, e.g. importance sampling or Hutchinson), or ``None`` (no
    likelihood, e.g. a GAN). Continuous models give a density of the continuous data; discrete
    models the probability of the integer levels.
``likelihood_space`` (attribute, with ``log_likelihood``)
    what ``log_likelihood`` of quantized image data (at the levels' values 2k/(L−1) − 1) means:
    ``"levels"``: log P(levels), exact or bounded (MADE-categorical, PixelCNN, TransformerAR on
    images, the VAE: its Gaussian decoder dequantizes and adds the bin volume itself);
    ``"density"``: a density p of the continuous input (flows, CNF, MADE-MoG), trained on
    pixels dequantized by :func:`genspace.data.dequantize`, y = 2(k + u)/L − 1 (L bins of width
    2/L tiling [−1, 1)): score it on dequantized levels, log P(k) ≥ E_u log p(y) + D·log(2/L) (Theis et al.
    2016; :func:`genspace.compare.heldout_nll` does so); ``None``: no likelihood. On 2-D points
    every likelihood is a density (nats). A model may also expose ``likelihood_description``, a
    short text naming its estimator (e.g. the VAE's K).

Conventions: 2-D toys are float (N, 2); images are float (N, C, H, W) in [−1, 1] with
``n_levels`` grey levels (:func:`genspace.data.to_uint8` gives the integer levels); normalizing
flows map data x → latent z in the forward direction, ``forward(x) -> (z, log|det ∂z/∂x|)``.
"""
