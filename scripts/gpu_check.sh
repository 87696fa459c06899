#!/usr/bin/env bash
# The prepared GPU check (python -m depenc.gpu_check; under 8 minutes on one H200): FlexAttention against
# SDPA for the bias form, 200 steps of bf16 + torch.compile training of DepEnc and the baseline, and peak
# memory / tokens/s at T=1024 and 2048. Run from anywhere: `bash scripts/gpu_check.sh [--tiny] [--parts ...]`.
# Results go to $OUT (the device tool returns it), else reports/gpu_check/.
#
# Setup, from the repo: a python ($PYTHON, default python3) whose torch is 2.13 is used as it is. Otherwise
# `pip install -e . torch==2.13.0` is tried (fails fast where no package index is reachable), and failing
# that the machine's own torch is used (its version is in the report). The project runs from src/; the
# wheels in .whl/, if any, are installed to /tmp/site first (the device machine has no network: carry
# omegaconf and whatever else is missing as wheels). Without CUDA only --tiny runs (the CPU check).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-reports/gpu_check}"
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

torch_213() { "$PY" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13") else 1)' 2>/dev/null; }
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || echo "no torch in $PY"

if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! torch_213; then
    echo "torch is not 2.13: trying pip install -e . torch==2.13.0"
    "$PY" -m pip install -q --retries 0 --timeout 10 -e . "torch==2.13.0" \
        || echo "warning: could not install torch 2.13.0 (no package index?): using the machine's torch"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

missing=$("$PY" - <<'EOF'
import importlib.util
need = ["omegaconf", "lightning", "torchmetrics", "tokenizers", "litdata"]  # part train (depenc.train)
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
EOF
)
parts=()
if [ -n "$missing" ]; then
    echo "warning: part train needs $missing (carry them as wheels in .whl/, see the device README): running flex and bench"
    case " $* " in *" --parts "*) ;; *) parts=(--parts flex bench) ;; esac
fi
"$PY" -c 'import torch; print("using torch", torch.__version__, "on", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'

"$PY" -m depenc.gpu_check --out "$OUT" "${parts[@]}" "$@"
