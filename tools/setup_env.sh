#!/usr/bin/env bash
# Create .venv/ and install the pinned stack (torch, mmengine, mmcv with compiled ops, mmdet)
# plus gdp_det in editable mode. Idempotent: a second run only checks a stamp and exits.
# The exact versions live in requirements/constraints.txt (every pip call here uses it
# through -c); pyproject.toml declares only the ranges gdp-det supports.
# The mmcv wheel is built once from its sdist and cached under $GDP_CACHE (default
# ~/.cache/gdp_det), keyed by mmcv, torch and Python versions.
set -euo pipefail
cd "$(dirname "$0")/.."

CONSTRAINTS=requirements/constraints.txt
pin() { sed -n "s/^$1==\([^ #]*\).*/\1/p" "$CONSTRAINTS"; }
TORCH=$(pin torch)
MMCV=$(pin mmcv)
[[ -n "$TORCH" && -n "$MMCV" ]] || { echo "setup_env.sh: $CONSTRAINTS must pin torch and mmcv" >&2; exit 1; }
VENV=${GDP_VENV:-.venv}
CACHE=${GDP_CACHE:-$HOME/.cache/gdp_det}
PY=${PYTHON:-python3}
STAMP="$VENV/.gdp_det_installed"
# The stamp records what was installed; any change to this script, the constraints or
# pyproject.toml invalidates it.
WANT=$(cat "$0" "$CONSTRAINTS" pyproject.toml | sha256sum | cut -c1-16)

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  exit 0
fi

fail() {
  echo "" >&2
  echo "setup_env.sh: FAILED: $1" >&2
  echo "  Nothing was marked installed; fix the cause and rerun 'make setup' (it resumes)." >&2
  echo "  To start over: rm -rf $VENV  (the cached mmcv wheel in $CACHE is kept)." >&2
  exit 1
}

rm -f "$STAMP"
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV" || fail "python venv creation"
fi
PIP=("$VENV/bin/python" -m pip install -q)
"${PIP[@]}" --upgrade pip wheel || fail "pip/wheel upgrade"
echo "[setup] torch, torchvision, mmengine, mmdet as pinned in $CONSTRAINTS"
"${PIP[@]}" -c "$CONSTRAINTS" torch torchvision || fail "torch install"
"${PIP[@]}" -c "$CONSTRAINTS" mmengine mmdet || fail "mmengine/mmdet install"

PYVER=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
WHEELDIR="$CACHE/wheels/mmcv-$MMCV-torch$TORCH-$PYVER-$(uname -m)"
if ! "$VENV/bin/python" -c "import mmcv, sys; from mmcv.ops import nms, RoIAlign; sys.exit(mmcv.__version__ != '$MMCV')" 2>/dev/null; then
  if ! ls "$WHEELDIR"/mmcv-*.whl >/dev/null 2>&1; then
    echo "[setup] building mmcv $MMCV with its CPU ops from source (14-34 min measured on 2-core machines, once; a line every 3 min)"
    BUILD=$(mktemp -d "${TMPDIR:-/tmp}/gdp_mmcv_build.XXXXXX")
    trap 'rm -rf "$BUILD"' EXIT
    # mmcv's setup.py imports pkg_resources (setuptools < 70) and needs the installed torch.
    "${PIP[@]}" "setuptools<70" || fail "setuptools<70 for the mmcv build"
    "$VENV/bin/python" -m pip download -q --no-deps --no-build-isolation --no-binary :all: \
      -c "$CONSTRAINTS" mmcv -d "$BUILD" || fail "downloading the mmcv $MMCV sdist"
    tar -xzf "$BUILD"/mmcv-$MMCV.tar.gz -C "$BUILD" || fail "unpacking the mmcv sdist"
    # torch 2.14 headers require C++20; mmcv's setup.py asks for C++17.
    sed -i 's/c++17/c++20/g' "$BUILD/mmcv-$MMCV/setup.py"
    # The compile is silent for tens of minutes: say every few minutes that it is still going.
    START=$SECONDS
    MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation \
      "$BUILD/mmcv-$MMCV" -w "$BUILD/wheel" &
    BUILD_PID=$!
    while kill -0 "$BUILD_PID" 2>/dev/null; do
      for _ in $(seq "${GDP_HEARTBEAT_S:-180}"); do kill -0 "$BUILD_PID" 2>/dev/null || break; sleep 1; done
      kill -0 "$BUILD_PID" 2>/dev/null \
        && echo "[setup] still compiling mmcv: $(( (SECONDS - START) / 60 )) min so far ($(find "$BUILD/mmcv-$MMCV/build" -name '*.o' 2>/dev/null | wc -l) objects compiled)"
    done
    wait "$BUILD_PID" || fail "compiling mmcv $MMCV (see the compiler output above)"
    echo "[setup] mmcv compiled in $(( (SECONDS - START) / 60 )) min"
    mkdir -p "$WHEELDIR"
    # Copy then rename so a concurrent or interrupted run never sees a partial wheel.
    for w in "$BUILD"/wheel/mmcv-*.whl; do
      cp "$w" "$WHEELDIR/.$(basename "$w").part" && mv "$WHEELDIR/.$(basename "$w").part" "$WHEELDIR/$(basename "$w")"
    done
  else
    echo "[setup] reusing cached mmcv wheel from $WHEELDIR"
  fi
  "${PIP[@]}" --no-deps "$WHEELDIR"/mmcv-*.whl || fail "installing the cached mmcv wheel (delete $WHEELDIR to rebuild)"
fi
# torch declares setuptools>=77; put it back after the mmcv build. <81 still ships
# pkg_resources, which mmengine uses to resolve `mmdet::` configs.
"${PIP[@]}" "setuptools>=77,<81" || fail "restoring setuptools"
echo "[setup] gdp_det (editable) with its test, report and deploy extras"
"${PIP[@]}" -c "$CONSTRAINTS" -e ".[test,report,deploy]" || fail "installing gdp_det"
# mmdeploy pins protobuf<=3.20.2, which onnx contradicts; it runs with the newer one
# (see the deploy extra in pyproject.toml)
"${PIP[@]}" -c "$CONSTRAINTS" --no-deps mmdeploy || fail "installing mmdeploy"
"$VENV/bin/python" -c "import mmcv, mmdet, mmengine, gdp_det; from mmcv.ops import nms, RoIAlign" \
  || fail "import check of mmcv/mmdet/mmengine/gdp_det"
echo "$WANT" > "$STAMP"
echo "[setup] done: $VENV"
