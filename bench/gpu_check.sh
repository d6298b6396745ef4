#!/usr/bin/env bash
# One prepared check of fusetomo on a GPU (issue 20, item 4): the GPU tests, CPU-GPU
# agreement of projector, TV, fused solver and uncertainty at 64^3, time per fused iteration
# and time to answer at 128^3 and 256^3, the live per-tilt time at 256^3; one JSON file and
# a printed summary. At most 8 minutes on an H100 (phases stop starting after --budget-s).
#
#   bash bench/gpu_check.sh [--out FILE.json] [--budget-s S] [--no-tests]
#   bash bench/gpu_check.sh --device cpu --dry-run [--out FILE.json]   # no GPU; CI runs this
#   bash bench/gpu_check.sh --fetch-wheels    # here, with the network: the wheels to carry
#
# On a machine without network (the lent GPU machine: Python 3.12, CuPy, NumPy, SciPy,
# numba, h5py, pytest there; sigpy and PyWavelets not), first run --fetch-wheels where pip
# reaches PyPI; it fills .whl/ (ignored by git). The check installs .whl/*.whl and fusetomo
# itself (from this tree, no network) into a temporary folder when fusetomo does not import.
# Figures go to docs/benchmarks.md with the device named (bench/README.md says how).
set -uo pipefail
cd "$(dirname "$0")/.."

device=gpu dry=0 out="" budget="" tests=1 fetch=0 py="${PYTHON:-python3}"
args=("$@")
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --out) out="$2"; shift 2 ;;
    --budget-s) budget="$2"; shift 2 ;;
    --no-tests) tests=0; shift ;;
    --fetch-wheels) fetch=1; shift ;;
    --python) py="$2"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
case "$device" in gpu|cpu) ;; *) echo "gpu_check.sh: --device gpu|cpu" >&2; exit 2 ;; esac

if [ "$fetch" = 1 ]; then
  # Pinned to what the project uses; Python 3.12 manylinux wheels for the GPU machine.
  exec "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl sigpy==0.1.27 PyWavelets==1.8.0
fi

[ -n "$out" ] || out="bench/results/gpu_check-${device}$([ "$dry" = 1 ] && echo -dry).json"
[ -n "$budget" ] || budget=$([ "$dry" = 1 ] && echo 120 || echo 400)
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg GPU_CHECK_ARGS="${args[*]:-}"
t_start=$(date +%s)

# fusetomo (and sigpy) importable? If not, install the carried wheels and this tree.
if ! "$py" -c "import sigpy, fusetomo.solver.projector" 2>/dev/null; then
  site="${TMPDIR:-/tmp}/fusetomo-gpu-check-site"
  echo "installing fusetomo (and .whl/*.whl) into $site"
  whl=(); [ -d .whl ] && whl=(.whl/*.whl)
  "$py" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
    --no-cache-dir --upgrade --target "$site" "${whl[@]}" . || {
    echo "gpu_check.sh: could not install fusetomo here (run --fetch-wheels where pip" \
         "reaches PyPI and carry .whl)" >&2; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi

# 1. the GPU tests (they skip without CuPy or a GPU: with --device cpu this only checks that
#    they are selected and import)
pyargs=()
if [ "$tests" = 1 ]; then
  files=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
  xml="${TMPDIR:-/tmp}/fusetomo-gpu-tests-$$.xml"
  t0=$(date +%s)
  # shellcheck disable=SC2086
  timeout 240 "$py" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$xml" $files
  rc=$?
  pyargs=(--pytest-xml "$xml" --pytest-rc "$rc" --pytest-s "$(( $(date +%s) - t0 ))")
fi

# 2-4. agreement, timing, live: bench/gpu_check.py (the budget counts from here)
left=$(( budget - ($(date +%s) - t_start) ))
[ "$left" -gt 30 ] || left=30
dry_flag=(); [ "$dry" = 1 ] && dry_flag=(--dry-run)
"$py" bench/gpu_check.py --device "$device" "${dry_flag[@]}" --out "$out" \
  --budget-s "$left" "${pyargs[@]}"
rc=$?
echo "gpu_check.sh: $(( $(date +%s) - t_start )) s in all; exit $rc"
exit $rc
