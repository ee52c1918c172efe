#!/usr/bin/env bash
# Idempotent environment set-up for mmum.
#
#   tools/setup_env.sh                      # create/refresh .venv in the repo
#   tools/setup_env.sh --wheelhouse DIR     # the same, offline: every package
#                     from DIR only (pip --no-index --find-links DIR); fill DIR
#                     on a machine with internet with tools/make_wheelhouse.sh
#
# Environment variables:
#   MMUM_TORCH        pip spec(s) for torch    (default: "torch==2.14.1 torchvision==0.29.1")
#   MMUM_TORCH_INDEX  extra index for torch, e.g. a CUDA wheel index (optional)
#   MMUM_VENV         where the venv lives      (default: <repo>/.venv)
#   MMUM_CACHE        cache outside the repo    (default: ~/.cache/mmum): the
#                     built mmcv wheel and the shared base environment
#   MMUM_SHARED_BASE  1 (default): torch, mmcv and the toolboxes live in one
#                     base environment per requirement set under MMUM_CACHE,
#                     and the repo's .venv reaches it through a .pth file, so a
#                     fresh clone only installs mmum itself (seconds). 0: install
#                     everything into the repo's .venv.
#   MMUM_MMCV_OPS     1 (default): build mmcv with its compiled ops (minutes;
#                     the mmdet / mmseg transfer configs need them). 0: build
#                     mmcv without ops (MMCV_WITH_OPS=0, the pure-Python
#                     'mmcv-lite', seconds): enough for every pre-training config.
#   MMUM_TORCH_FROM   path of a python that already has torch (e.g. a cluster's
#                     CUDA build): the environment is created from it and reaches
#                     its torch through a .pth file instead of installing one;
#                     mmum's other dependencies are still installed (pip
#                     --ignore-installed), and that python's env is left alone.
#   MMUM_WHEELHOUSE   same as --wheelhouse DIR
#   MMUM_CXX_STD      C++ standard for mmcv ops (default: c++20 for torch >= 2.10, else c++17)
#   FORCE_CUDA        1: build mmcv's ops with CUDA kernels (needs nvcc and a CUDA
#                     torch) even where no GPU is visible; 0: CPU ops even on a GPU
#                     machine. Default: CUDA kernels where nvcc and a GPU are found.
#                     The shared base environment is kept apart per flavour.
#   MAX_JOBS          parallel compile jobs for mmcv (default: number of cores)
set -euo pipefail

WHEELHOUSE="${MMUM_WHEELHOUSE:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --wheelhouse) WHEELHOUSE="${2:?--wheelhouse needs a directory}"; shift 2 ;;
    --wheelhouse=*) WHEELHOUSE="${1#*=}"; shift ;;
    *) echo "setup_env.sh: unknown argument '$1' (valid: --wheelhouse DIR)" >&2; exit 2 ;;
  esac
done
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || { echo "setup_env.sh: --wheelhouse '$WHEELHOUSE' is not a directory" >&2; exit 2; }
  WHEELHOUSE="$(cd "$WHEELHOUSE" && pwd)"
fi
OPS="${MMUM_MMCV_OPS:-1}"
[ "$OPS" = 0 ] || [ "$OPS" = 1 ] || { echo "setup_env.sh: MMUM_MMCV_OPS='$OPS' must be 0 or 1" >&2; exit 2; }
TORCH_FROM="${MMUM_TORCH_FROM:-}"
if [ -n "$TORCH_FROM" ] && ! "$TORCH_FROM" -c 'import torch' >/dev/null 2>&1; then
  echo "setup_env.sh: MMUM_TORCH_FROM='$TORCH_FROM' is not a python that can import torch" >&2; exit 2
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMUM_VENV:-$ROOT/.venv}"
CACHE="${MMUM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmum}"
TORCH_SPEC="${MMUM_TORCH:-torch==2.14.1 torchvision==0.29.1}"
MMCV_VERSION=2.1.0
STEP="start"

log() { printf '\033[1;34m[setup]\033[0m %s\n' "$*"; }
fail() {
  printf '\033[1;31m[setup] FAILED at step: %s\033[0m\n' "$STEP" >&2
  case "$STEP" in
    venv) echo "  -> need python3 with the venv module (Debian: apt-get install python3-venv)." >&2 ;;
    torch) echo "  -> check MMUM_TORCH='$TORCH_SPEC' names an installable torch/torchvision pair" \
                "(and MMUM_TORCH_INDEX for CUDA builds)." >&2 ;;
    mmcv-download) echo "  -> could not fetch the mmcv==$MMCV_VERSION source distribution from the package index" \
                        "${WHEELHOUSE:+(or find it in $WHEELHOUSE: fill it with tools/make_wheelhouse.sh)}." >&2 ;;
    cuda-torch) echo "  -> mmcv's CUDA ops need a CUDA build of torch; this torch is CPU-only. Point MMUM_TORCH_INDEX" \
                     "at a CUDA wheel index (or MMUM_TORCH_FROM at a CUDA torch), or set FORCE_CUDA=0 for CPU ops." >&2 ;;
    mmcv-build) echo "  -> mmcv ops failed to compile; the full log is $CACHE/mmcv-build.log." \
                     "Needs gcc/g++ (apt-get install build-essential); try MMUM_CXX_STD=c++17 for old torch," \
                     "or MAX_JOBS=1 if the compiler ran out of memory." >&2 ;;
    openmmlab) echo "  -> installing the OpenMMLab packages failed; see pip's message above" \
                    "${WHEELHOUSE:+(a wheel missing from $WHEELHOUSE? make it with tools/make_wheelhouse.sh for this Python and platform)}." >&2 ;;
    mmum) echo "  -> 'pip install -e .' failed; see pip's message above." >&2 ;;
    check) echo "  -> packages installed but do not import together; see the traceback above." \
                "Remove $VENV and run again." >&2 ;;
  esac
  exit 1
}
trap fail ERR

mkdir -p "$CACHE/wheels"

# pip, with the local-index noise filtered out of its messages (exit status kept);
# with a wheelhouse, it never looks at an index
OFFLINE=()
if [ -n "$WHEELHOUSE" ]; then
  OFFLINE=(--no-index --find-links "$WHEELHOUSE")
  # pip processes started by builds (setuptools' develop) too
  export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"
fi
pipq() { "${PIP[@]}" "$@" "${OFFLINE[@]}" 2> >(grep -v 'is ignored' >&2); }
# with another env's torch visible, mmum's dependencies still go into ours
OWN=()
[ -z "$TORCH_FROM" ] || OWN=(--ignore-installed)
# mmcv's import that shows the wanted build is there
MMCV_CHECK=mmcv.ops; [ "$OPS" = 1 ] || MMCV_CHECK=mmcv
# CPU or CUDA kernels in mmcv's ops, decided before the base environment is
# picked (so a GPU machine never reuses a CPU-built mmcv, nor the reverse):
# CUDA where nvcc is there and FORCE_CUDA=1 or a GPU is visible
FLAVOUR=cpu
if [ "$OPS" = 1 ] && [ "${FORCE_CUDA:-}" != 0 ] && command -v nvcc >/dev/null 2>&1 && \
   { [ "${FORCE_CUDA:-}" = 1 ] || nvidia-smi -L >/dev/null 2>&1 || [ -e /dev/nvidia0 ]; }; then
  FLAVOUR=cuda
elif [ "$OPS" = 1 ] && [ "${FORCE_CUDA:-}" = 1 ]; then
  log "FORCE_CUDA=1 but no nvcc on PATH: mmcv's ops get CPU kernels only"
fi
# what sets this environment apart from the default one (empty by default,
# so the CPU environment's key is what it was before the flavour was keyed)
VARIANT=""
[ "$OPS" = 1 ] || VARIANT+=" mmcv-ops=0"
[ "$FLAVOUR" = cpu ] || VARIANT+=" flavour=$FLAVOUR"
[ -z "$TORCH_FROM" ] || VARIANT+=" torch-from=$TORCH_FROM $("$TORCH_FROM" -c 'import torch; print(torch.__version__, torch.version.cuda)')"
# appended to the import checks: the installed mmcv carries the flavour's
# kernels (a base made before the flavour was keyed may hold a CPU build)
KERNELS=""
[ "$FLAVOUR" = cpu ] || KERNELS="; import mmcv.ops; assert mmcv.ops.get_compiling_cuda_version() != 'not available'"
VENV_PYTHON="${TORCH_FROM:-python3}"

# Fast path: everything already installed for this exact set of requirements.
STAMP="$VENV/.mmum-setup-stamp"
want_stamp="$(cat "$ROOT/tools/setup_env.sh" "$ROOT/requirements/"*.txt "$ROOT/setup.py" | sha1sum | cut -c1-16) $TORCH_SPEC$VARIANT"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && \
   "$VENV/bin/python" -c "import $MMCV_CHECK, mmum$KERNELS" >/dev/null 2>&1; then
  log "environment up to date ($VENV)"
  exit 0
fi

# 1. virtual environments -----------------------------------------------------
# BASE holds torch, mmcv and the toolboxes; VENV (the repo's .venv) holds mmum.
STEP=venv
if [ "${MMUM_SHARED_BASE:-1}" = 1 ]; then
  KEY="$( (cat "$ROOT/requirements/"*.txt; echo "$TORCH_SPEC ${MMUM_TORCH_INDEX:-} mmcv$MMCV_VERSION$VARIANT"; \
           "$VENV_PYTHON" -c 'import sys; print(sys.version)') | sha1sum | cut -c1-12)"
  BASE="$CACHE/venvs/$KEY"
else
  KEY=own; BASE="$VENV"
fi
PY="$BASE/bin/python"
if [ ! -x "$PY" ]; then
  log "creating $BASE"
  "$VENV_PYTHON" -m venv "$BASE"
fi
if [ -n "$TORCH_FROM" ]; then  # that python's torch, after our own packages
  "$TORCH_FROM" -c 'import os, torch; print(os.path.dirname(os.path.dirname(torch.__file__)))' \
    > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/_mmum_torch_from.pth"
fi
PIP=("$PY" -m pip --disable-pip-version-check -q)
if [ -f "$BASE/.mmum-base-complete" ] && ! "$PY" -c "import $MMCV_CHECK$KERNELS" >/dev/null 2>&1; then
  log "$BASE: its mmcv lacks the $FLAVOUR kernels; rebuilding it"
  rm -f "$BASE/.mmum-base-complete"
fi
if [ -f "$BASE/.mmum-base-complete" ]; then
  log "using the shared base environment $BASE ($FLAVOUR)"
else

# 2. torch ---------------------------------------------------------------------
STEP=torch
# setuptools < 81 keeps pkg_resources (mmcv's setup.py imports it); torch wants >= 77.
pipq install 'setuptools>=77,<81' wheel ninja
if [ -n "$TORCH_FROM" ]; then
  log "using torch $("$PY" -c 'import torch; print(torch.__version__)') of $TORCH_FROM"
elif ! "$PY" - "$TORCH_SPEC" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
for spec in sys.argv[1].split():
    name, _, ver = spec.partition('==')
    got = version(name).split('+')[0]
    assert not ver or got == ver, (name, got, ver)
PYEOF
then
  log "installing $TORCH_SPEC"
  # shellcheck disable=SC2086
  pipq install $TORCH_SPEC ${MMUM_TORCH_INDEX:+${WHEELHOUSE:---extra-index-url "$MMUM_TORCH_INDEX"}}
  "$PY" -c "import torch, torchvision" || false
else
  log "torch already installed: $("$PY" -c 'import torch; print(torch.__version__)')"
fi

# 3. mmcv with ops, built once per (torch, cuda, python) and cached; without
# ops (MMUM_MMCV_OPS=0) it is pure Python, built once ----------------------
STEP=mmcv-download
TAG="$("$PY" -c 'import sys, torch; v = torch.__version__.replace("+", "_"); print("torch%s-py%d%d" % (v, *sys.version_info[:2]))')"
HAVE_NVCC=0
if [ "$OPS" = 0 ]; then
  TAG=noops
elif [ "$FLAVOUR" = cuda ]; then
  STEP=cuda-torch
  "$PY" -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)'
  STEP=mmcv-download
  HAVE_NVCC=1; TAG="$TAG-cuda"
else
  TAG="$TAG-cpu"
fi

WHEEL_DIR="$CACHE/wheels/mmcv-$MMCV_VERSION-$TAG"
# (installed in this env, not seen through MMUM_TORCH_FROM's)
if ! "$PY" -c "import mmcv, $MMCV_CHECK, sys$KERNELS; sys.exit(0 if mmcv.__version__ == '$MMCV_VERSION' and mmcv.__file__.startswith(sys.prefix) else 1)" >/dev/null 2>&1; then
  if ! ls "$WHEEL_DIR"/mmcv*.whl >/dev/null 2>&1; then
    STEP=mmcv-download
    SRC="$CACHE/src"; mkdir -p "$SRC"
    if [ -n "$WHEELHOUSE" ]; then
      cp "$WHEELHOUSE/mmcv-$MMCV_VERSION.tar.gz" "$SRC/"
    elif [ ! -f "$SRC/mmcv-$MMCV_VERSION.tar.gz" ]; then
      log "downloading mmcv==$MMCV_VERSION source"
      pipq download --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$SRC"
      test -f "$SRC/mmcv-$MMCV_VERSION.tar.gz"
    fi
    STEP=mmcv-build
    BUILD="$(mktemp -d)"
    tar xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$BUILD"
    CXX_STD="${MMUM_CXX_STD:-$("$PY" -c 'import torch; v=tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); print("c++20" if v >= (2, 10) else "c++17")')}"
    sed -i "s/-std=c++1[47]/-std=$CXX_STD/g" "$BUILD/mmcv-$MMCV_VERSION/setup.py"
    if [ "$OPS" = 1 ]; then
      log "building mmcv==$MMCV_VERSION with ops ($TAG, -std=$CXX_STD, cuda=$HAVE_NVCC); this takes ~12 min on 2 cores"
    else
      log "building mmcv==$MMCV_VERSION without ops (MMCV_WITH_OPS=0: pure Python, installs as mmcv-lite)"
    fi
    log "build log: $CACHE/mmcv-build.log"
    (cd "$BUILD/mmcv-$MMCV_VERSION" && \
      MMCV_WITH_OPS="$OPS" FORCE_CUDA="$HAVE_NVCC" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "$PY" -m pip wheel --no-deps --no-build-isolation -w "$WHEEL_DIR.tmp" . "${OFFLINE[@]}" >"$CACHE/mmcv-build.log" 2>&1)
    mv "$WHEEL_DIR.tmp" "$WHEEL_DIR"
    rm -rf "$BUILD"
  fi
  log "installing cached mmcv wheel from $WHEEL_DIR"
  STEP=mmcv-build
  # (replacing an mmcv of the same version built for the other flavour)
  pipq install "${OWN[@]}" --force-reinstall --no-deps "$WHEEL_DIR"/mmcv*.whl
  pipq install "${OWN[@]}" "$WHEEL_DIR"/mmcv*.whl 'mmengine==0.10.7'
else
  log "mmcv $MMCV_VERSION ($MMCV_CHECK) already installed"
fi

# 4. OpenMMLab toolboxes + mmum ---------------------------------------------------
STEP=openmmlab
log "installing mmengine, mmpretrain, mmdet, mmsegmentation and test tools"
pipq install "${OWN[@]}" -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"
"$PY" -c "import $MMCV_CHECK, mmpretrain, mmdet, mmseg$KERNELS" || false
[ "$BASE" = "$VENV" ] || touch "$BASE/.mmum-base-complete"
fi  # base environment

# 5. the repo's venv: mmum (editable) on top of the base ------------------------
STEP=mmum
if [ "$BASE" != "$VENV" ]; then
  [ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$VENV_PYTHON" -m venv --without-pip "$VENV"; }
  site() { "$1" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
  # the base's packages, then (MMUM_TORCH_FROM) the other env's torch
  { site "$PY"; [ -z "$TORCH_FROM" ] || cat "$(site "$PY")/_mmum_torch_from.pth"; } \
    > "$(site "$VENV/bin/python")/_mmum_shared_base.pth"
  PY="$VENV/bin/python"  # pip itself comes from the base through the .pth
  for tool in pip:pip pytest:pytest torchrun:torch.distributed.run; do
    printf '#!/bin/sh\nexec "%s" -m %s "$@"\n' "$PY" "${tool#*:}" > "$VENV/bin/${tool%%:*}"
    chmod +x "$VENV/bin/${tool%%:*}"
  done
  PIP=("$PY" -m pip --disable-pip-version-check -q)
fi
log "installing mmum (editable) into $VENV"
pipq install "${OWN[@]}" --no-deps --no-build-isolation -e "$ROOT"

STEP=check
"$PY" -c "import $MMCV_CHECK, mmpretrain, mmdet, mmseg, mmum$KERNELS; print('mmum', mmum.__version__, 'ready ($FLAVOUR)')"
echo "$want_stamp" > "$STAMP"
log "done. Activate with: source $VENV/bin/activate"
