#!/usr/bin/env bash
# Fill a wheelhouse for an offline install of mmum (run on a machine WITH
# internet; the target machine then runs `tools/setup_env.sh --wheelhouse DIR`).
#
#   tools/make_wheelhouse.sh DIR [--python-version 3.11]
#                                [--platform manylinux_2_28_x86_64]...
#                                [--torch "torch==2.14.1 torchvision==0.29.1" | --torch none]
#                                [--torch-index URL]
#
# DIR gets, for the given Python version and platform (defaults: this
# machine's Python, manylinux_2_28_x86_64, which also accepts the older
# manylinux_2_17 / manylinux2014 wheels):
#   - binary wheels of requirements/runtime.txt and requirements/tests.txt and
#     of everything they depend on;
#   - the mmcv==2.1.0 source distribution (no wheel exists for current torch;
#     setup_env.sh builds it on the target, with or without ops) and the wheels
#     of its run-time dependencies;
#   - the build tools setup_env.sh uses: setuptools<81 (keeps pkg_resources,
#     which mmcv's setup.py imports), wheel, ninja;
#   - torch and torchvision (--torch; "none" leaves them out, for machines that
#     bring their own torch, e.g. a cluster's CUDA build: see setup_env.sh's
#     MMUM_TORCH_FROM). --torch-index adds an index for CUDA wheels, e.g.
#     https://download.pytorch.org/whl/cu121.
# DIR can be filled for several platforms / Python versions one after another.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MMCV_VERSION=2.1.0
BUILD_DEPS=('setuptools>=77,<81' wheel ninja)
usage() { sed -n '2,24p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

DIR="" PYVER="" PLATFORMS=() TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" TORCH_INDEX=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python-version) PYVER="${2:?--python-version needs a value, e.g. 3.11}"; shift 2 ;;
    --platform) PLATFORMS+=("${2:?--platform needs a value, e.g. manylinux_2_28_x86_64}"); shift 2 ;;
    --torch) TORCH_SPEC="${2?--torch needs a value, e.g. \"torch==2.14.1 torchvision==0.29.1\" or none}"; shift 2 ;;
    --torch-index) TORCH_INDEX="${2:?--torch-index needs a URL}"; shift 2 ;;
    -h|--help) usage ;;
    -*) echo "make_wheelhouse: unknown option '$1'" >&2; usage ;;
    *) [ -z "$DIR" ] || { echo "make_wheelhouse: one DIR only (got '$DIR' and '$1')" >&2; exit 2; }
       DIR="$1"; shift ;;
  esac
done
[ -n "$DIR" ] || { echo "make_wheelhouse: missing DIR" >&2; usage; }
PYVER="${PYVER:-$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')}"
[[ "$PYVER" =~ ^3\.[0-9]+$ ]] || { echo "make_wheelhouse: --python-version '$PYVER' is not like 3.11" >&2; exit 2; }
[ ${#PLATFORMS[@]} -gt 0 ] || PLATFORMS=(manylinux_2_28_x86_64)
[ "$TORCH_SPEC" = none ] && TORCH_SPEC=""
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
log() { printf '\033[1;34m[wheelhouse]\033[0m %s\n' "$*"; }

# binary wheels for the target, whatever this machine is. pip matches a
# --platform tag exactly, so a manylinux platform is expanded here into every
# older manylinux tag a machine of it also runs (manylinux_2_28 runs
# manylinux_2_17 = manylinux2014, manylinux2010 = 2_12, manylinux1 = 2_5).
TARGET=(--only-binary=:all: --python-version "$PYVER" --implementation cp)
for p in "${PLATFORMS[@]}"; do
  case "$p" in
    manylinux2014_*) p="manylinux_2_17_${p#manylinux2014_}" ;;
    manylinux2010_*) p="manylinux_2_12_${p#manylinux2010_}" ;;
    manylinux1_*) p="manylinux_2_5_${p#manylinux1_}" ;;
  esac
  if [[ "$p" =~ ^manylinux_2_([0-9]+)_(.+)$ ]]; then
    arch="${BASH_REMATCH[2]}"
    for ((minor = BASH_REMATCH[1]; minor >= 5; minor--)); do
      TARGET+=(--platform "manylinux_2_${minor}_$arch")
      case $minor in 17) TARGET+=(--platform "manylinux2014_$arch") ;;
                     12) TARGET+=(--platform "manylinux2010_$arch") ;;
                      5) TARGET+=(--platform "manylinux1_$arch") ;; esac
    done
  else
    TARGET+=(--platform "$p")
  fi
done
pipd() { python3 -m pip download --disable-pip-version-check -q -d "$DIR" "$@"; }

# 1. the mmcv source distribution. pip reads its metadata by running its
# setup.py, which needs pkg_resources: a small helper venv with setuptools<81.
TMP="$(mktemp -d)"; trap 'rm -rf "$TMP"' EXIT
if [ ! -f "$DIR/mmcv-$MMCV_VERSION.tar.gz" ]; then
  log "mmcv==$MMCV_VERSION source distribution"
  python3 -m venv "$TMP/venv"
  "$TMP/venv/bin/python" -m pip install --disable-pip-version-check -q "${BUILD_DEPS[@]:0:2}"
  "$TMP/venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
    --no-binary :all: --no-build-isolation -d "$DIR" "mmcv==$MMCV_VERSION"
fi
test -f "$DIR/mmcv-$MMCV_VERSION.tar.gz"
# its run-time requirements, as its own metadata lists them (the base set,
# before the first [extra] section)
tar xzf "$DIR/mmcv-$MMCV_VERSION.tar.gz" -C "$TMP" "mmcv-$MMCV_VERSION/mmcv.egg-info/requires.txt"
sed -n '/^\[/q;/./p' "$TMP/mmcv-$MMCV_VERSION/mmcv.egg-info/requires.txt" > "$TMP/mmcv-requires.txt"

# 2. everything else, resolved together for the target
log "wheels for Python $PYVER on ${PLATFORMS[*]}: build tools, ${TORCH_SPEC:-no torch}, mmcv's and mmum's requirements"
# shellcheck disable=SC2086
pipd "${TARGET[@]}" ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} \
  "${BUILD_DEPS[@]}" $TORCH_SPEC -r "$TMP/mmcv-requires.txt" \
  -r "$ROOT/requirements/runtime.txt" -r "$ROOT/requirements/tests.txt"

log "done: $(ls "$DIR" | wc -l) files, $(du -sh "$DIR" | cut -f1) in $DIR"
log "on the offline machine: tools/setup_env.sh --wheelhouse $DIR"
