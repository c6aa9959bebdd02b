#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one call (benchmarks/gpu.py says what each part measures).
#
#   bash benchmarks/gpu.sh            # on a machine with one CUDA GPU: about 8 minutes, prints every figure
#   bash benchmarks/gpu.sh --smoke    # the same code paths with tiny sizes on the CPU, to rehearse
#
# The data sets tiny-shakespeare and mnist are read from STRATA_DATA_MIRROR (a folder laid out like the
# data mirror: <name>/<files>), else from ./.data when it exists, else fetched into the cache.
# Python packages strata needs that the machine lacks can be given as wheels in ./.whl (installed into a
# temporary folder, nothing else touched).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "${TMPDIR:-/tmp}/strata-site" .whl/*.whl
  export PYTHONPATH="${TMPDIR:-/tmp}/strata-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${STRATA_DATA_MIRROR:-}" ] && [ -d .data ]; then export STRATA_DATA_MIRROR="$PWD/.data"; fi
missing=$("$PY" - <<'PY'
import importlib.util
need = ["torch", "numpy", "safetensors", "sklearn", "matplotlib", "rich", "PIL", "tokenizers", "sacrebleu", "tomli_w"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
  echo "gpu.sh: missing Python packages: $missing; install them, or put their wheels in ./.whl" >&2
  exit 2
fi
exec "$PY" benchmarks/gpu.py "$@"
