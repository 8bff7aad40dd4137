#!/usr/bin/env bash
# Idempotent set-up of the project's virtualenv (and, where we may, the Debian
# packages the demo and the tests use). Safe to run any number of times.
#
#   scripts/setup_env.sh            # runtime: venv + torch + opt-scale (+ matplotlib for plots)
#   scripts/setup_env.sh dev        # + test extras + Debian test packages
#
# Environment knobs:
#   VENV=path          virtualenv location (default .venv in the repo)
#   PYTHON=python3.11  interpreter used to create it
#   OPT_SKIP_APT=1     never call apt-get
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-runtime}"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
py="$VENV/bin/python"

# torch: only when none is importable, so a user's own (CUDA) build is left
# alone. 2.13.0 is pinned because this machine class holds its CPU wheel on
# local disk; an unpinned torch would pull a multi-GB CUDA build.
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
    log "no torch importable in $VENV: installing torch==2.13.0"
    "$py" -m pip install -q 'torch==2.13.0'
fi

# Debian packages: espeak-ng speaks the demo captions (otherwise the demo falls
# back to tone patterns); the tests also use real Ogg speech from
# sound-theme-freedesktop and a real Slurm cluster on this host.
apt_pkgs=(espeak-ng)
if [ "$mode" = dev ]; then
    apt_pkgs+=(sound-theme-freedesktop slurmctld slurmd slurm-client munge)
fi
missing=()
for p in "${apt_pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] && [ "${OPT_SKIP_APT:-0}" != 1 ]; then
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
            || { apt-get update -q >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } \
            || log "apt-get failed (offline?): going on without ${missing[*]} (features that need them fall back or skip)"
    else
        log "not root or no apt-get: skipping Debian packages ${missing[*]} (features that need them fall back or skip)"
    fi
fi

# The package itself (editable). A stamp keyed on pyproject.toml skips pip
# when nothing changed, so re-running costs a second.
# matplotlib (the plot extra) for every mode: opt-bench --plot draws the figures.
extra="[plot]"; [ "$mode" = dev ] && extra="[dev,plot]"
stamp="$VENV/.opt-scale-$mode.stamp"
want="$(sha256sum pyproject.toml | cut -c1-16) $extra"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$py" -c 'import opt_scale.kernels, opt_scale.data_prep' >/dev/null 2>&1; then
    log "installing opt-scale$extra into $VENV"
    "$py" -m pip install -q --disable-pip-version-check -e ".$extra"
    echo "$want" > "$stamp"
fi
# tail: DeepSpeed logs its accelerator choice on stdout while importing.
log "ready: $("$py" -c 'import torch, deepspeed; print(f"torch {torch.__version__}, deepspeed {deepspeed.__version__}")' 2>/dev/null | tail -1)"
