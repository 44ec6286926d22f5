#!/usr/bin/env bash
# Install the peer libraries used by benchmarks/ only (the `bench` extra), without their
# dependency trees: k-diffusion and torchcfm pull torchvision, some pull a CUDA torch.
# Usage: bash scripts/install-bench.sh [PIP]   (default: pip of the current python)
set -euo pipefail
PIP=${1:-"python -m pip"}
$PIP install -q -c constraints.txt --no-deps \
    "k-diffusion>=0.1,<1" "diffusers>=0.25,<1" "torchcfm>=1.0,<2" "flow_matching>=1.0,<2" \
    "torchsde>=0.2,<1" "trampoline" "torchdiffeq>=0.2,<1" "POT>=0.9,<1"
# light needs of diffusers' schedulers
$PIP install -q -c constraints.txt "huggingface_hub>=0.20" "regex" "importlib_metadata" "requests"
