"""Discrete diffusion for language: token processes, schedules α(t), objectives, token samplers.

Time runs t = 0 (clean) → t = 1 (fully noised); α(t) is the probability that a token is still
clean at time t (α(0) = 1, α(1) = 0); the mask token id is explicit (a tokenizer's
``mask_id``), never a magic number.

==================  ===========================================================================
module              what it holds
==================  ===========================================================================
``schedules``       α(t): linear, log-linear (SEDD), cosine, poly-k; α′, the NELBO weight
``processes``       absorbing (masked) and uniform forward processes q(x_t | x0)
``categorical``     float64 Gumbel-max draws with temperature
``objectives``      SUBS, masked NELBO (MDLM), block NELBO (BD3-LM), AR cross-entropy
``sedd``            score entropy (SEDD), Euler and Tweedie τ-leaping samplers
``samplers``        ancestral (cached), first-hitting, top-k orders, threshold, semi-AR, CFG
``block``           block diffusion and AR decoding with an exact KV cache
``likelihood``      the NELBO estimator with a declared estimator; exact AR likelihood
``oracle``          an exact denoiser for small enumerable token distributions
``model``           :class:`TextModel`, the trainer-facing model (family ``text``)
==================  ===========================================================================
"""

from genspace.discrete.processes import AbsorbingProcess, UniformProcess, get_token_process
from genspace.discrete.schedules import Schedule, get_schedule, schedule_names

__all__ = ["AbsorbingProcess", "UniformProcess", "get_token_process", "Schedule", "get_schedule", "schedule_names"]
