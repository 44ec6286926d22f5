"""Discrete diffusion for language: token processes, schedules α(t), objectives, token samplers.

Time runs t = 0 (clean) → t = 1 (fully noised); α(t) is the probability that a token is still
clean at time t (α(0) = 1, α(1) = 0); the mask token id is explicit (a tokenizer's
``mask_id``), never a magic number.
"""
