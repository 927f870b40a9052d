#!/bin/sh
# The README's performance table: every case in its own process (so peak_MiB is that case's peak RSS),
# OPTQ and friends next to the GEMM of the same size, measured in one run of this script.
#
#   ./bench/run_table.sh [build-dir]      (default ./build; needs the pptq_bench target built)
#   REPS=3 ./bench/run_table.sh           (each case repeated, its median reported: steadier on a shared machine)
set -eu
build=${1:-build}
reps=${REPS:-1}
if [ "$reps" -gt 1 ]; then
  agg="--benchmark_repetitions=$reps --benchmark_report_aggregates_only=true"
  keep='_median'
else
  agg=""
  keep='^BM_'
fi
bench="$build/bench/pptq_bench"
[ -x "$bench" ] || { echo "run_table.sh: $bench not found (cmake --build $build --target pptq_bench)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
echo "# OMP_NUM_THREADS=$OMP_NUM_THREADS, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m)"
for size in ${SIZES:-768/768 4096/4096 11008/4096 4096/11008}; do
  for b in BM_Gemm 'BM_Optq<double>' 'BM_Optq<float>' BM_OptqStochastic BM_Qronos BM_QronosCorrection; do
    "$bench" --benchmark_filter="^$b/$size/" --benchmark_counters_tabular=true $agg 2>/dev/null | grep '^BM_' | grep -- "$keep" || true
  done
done
"$bench" --benchmark_filter='^BM_OptqQ4K/' --benchmark_counters_tabular=true $agg 2>/dev/null | grep '^BM_' | grep -- "$keep" || true
for size in 2048/768 2048/4096; do
  for b in BM_GramAdd BM_GramGemm; do
    "$bench" --benchmark_filter="^$b/$size/" --benchmark_counters_tabular=true $agg 2>/dev/null | grep '^BM_' | grep -- "$keep" || true
  done
done
