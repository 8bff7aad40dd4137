# Sourced by demo.sh and demo_eval.sh: the repo as working directory, the
# project's virtualenv first on PATH (VENV absolute or relative to the repo),
# and the demo's directory.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export PATH="$VENV/bin:$PATH"
DEMO_DIR="${DEMO_DIR:-runs/demo}"
export PYTHONWARNINGS="ignore::FutureWarning"
