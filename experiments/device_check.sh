#!/usr/bin/env bash
# Runs experiments/device_check.py from a bare checkout (docs/device_check.md).
#
#   bash experiments/device_check.sh [--tiny] [--out DIR] [device_check.py flags...]
#
# Wheels carried in .whl/ are installed into $JAXFACE_WHEEL_SITE (default /tmp/site) when the
# packages they hold are missing; the repository is put on PYTHONPATH (no `pip install -e`
# needed); the PyTorch reference is taken from .device/peer_torch_dbvae.py when it was carried
# there and $JAXFACE_SHARED_BENCH is unset. The JSON goes to --out, else $OUT, else
# experiments/results. $PYTHON picks the interpreter (default python3).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"

shopt -s nullglob
wheels=("$repo"/.whl/*.whl)
if ((${#wheels[@]})) && ! "$python" -c "import ml_collections, tensorboardX" 2>/dev/null; then
  site="${JAXFACE_WHEEL_SITE:-/tmp/site}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${wheels[@]}"
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# JAX takes GPU memory as it needs it, leaving room for the PyTorch reference.
export XLA_PYTHON_CLIENT_PREALLOCATE="${XLA_PYTHON_CLIENT_PREALLOCATE:-false}"
if [[ -z "${JAXFACE_SHARED_BENCH:-}" && -f "$repo/.device/peer_torch_dbvae.py" ]]; then
  export JAXFACE_SHARED_BENCH="$repo/.device"
fi

cd "$repo"
exec "$python" experiments/device_check.py "$@"
