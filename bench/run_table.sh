#!/bin/sh
# The README's performance table: every case in its own process (so peak_MiB is that case's peak RSS),
# OPTQ and friends next to the GEMM of the same size, measured in one run of this script.
#
#   ./bench/run_table.sh [build-dir]      (default ./build; needs the pptq_bench target built)
#   REPS=3 ./bench/run_table.sh           (every case REPS times; the run with the median time is printed)
#   SIZES="4096/4096" ./bench/run_table.sh
#
# Where PyTorch is installed (Debian: apt-get install python3-torch), every round also times the
# reference GPTQ (bench/reference_gptq.py, a transcription of its fasterquant) on the 768² and 4096²
# layers, printed as BM_ReferenceGPTQ lines: the "N× faster than the reference" figure, in the same run.
#
# With REPS > 1 the repetitions are interleaved: round k runs every case of a size once (GEMM, OPTQ, ...)
# before round k + 1 starts. On a machine whose speed drifts (a shared host: 10-20 % within minutes),
# the cases of one round see the same speed, so the ratios to the GEMM are steadier than with a case's
# repetitions back to back.
set -eu
build=${1:-build}
reps=${REPS:-1}
bench="$build/bench/pptq_bench"
[ -x "$bench" ] || { echo "run_table.sh: $bench not found (cmake --build $build --target pptq_bench)" >&2; exit 1; }
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "# OMP_NUM_THREADS=$OMP_NUM_THREADS, REPS=$reps, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m)"
echo "# pptq's products: $("$bench" --backend)"
# With OpenBLAS as pptq's backend, its own GEMM is timed too (BM_GemmBlas): the faster yardstick.
gemm_blas=
"$bench" --benchmark_list_tests=true 2>/dev/null | grep -q '^BM_GemmBlas/' && gemm_blas=yes
here=$(dirname "$0")
# A Python with PyTorch for the reference (the PATH's python3, else Debian's), or none.
python=
for p in ${PYTHON:-python3 /usr/bin/python3}; do
  if "$p" -c 'import torch' 2>/dev/null; then python=$p; break; fi
done
[ -n "$python" ] || echo "# PyTorch not found: the reference GPTQ is not timed (apt-get install python3-torch)"

# run_cases FILTER-PREFIX... : REPS interleaved rounds over the given benchmark filters, then per filter the
# line of the run with the median real time (benchmark's line: name, real time, unit, CPU time, ...).
run_cases() {
  i=0
  for f in "$@"; do : >"$tmp/$i"; i=$((i + 1)); done
  k=0
  while [ "$k" -lt "$reps" ]; do
    i=0
    for f in "$@"; do
      case $f in
        REF:*)  # REF:rows/cols: the reference GPTQ, one repetition, in benchmark's line format
          [ -n "$python" ] && "$python" "$here/reference_gptq.py" --rows "${f#REF:}" --table --reps 1 2>/dev/null |
            grep '^BM_' >>"$tmp/$i" || true ;;
        *) "$bench" --benchmark_filter="$f" --benchmark_counters_tabular=true 2>/dev/null | grep '^BM_' >>"$tmp/$i" || true ;;
      esac
      i=$((i + 1))
    done
    k=$((k + 1))
  done
  i=0
  for f in "$@"; do
    if [ -s "$tmp/$i" ]; then
      n=$(wc -l <"$tmp/$i")
      # times are in one unit per case (ms for the large cases, as the benchmark sets it)
      sort -g -k2,2 "$tmp/$i" | sed -n "$(((n + 1) / 2))p"
    fi
    i=$((i + 1))
  done
}

for size in ${SIZES:-768/768 4096/4096 11008/4096 4096/11008}; do
  ref=
  case $size in 768/768 | 4096/4096) ref="REF:$size" ;; esac
  blas=
  [ -n "$gemm_blas" ] && blas="^BM_GemmBlas/$size/"
  run_cases "^BM_Gemm/$size/" $blas "^BM_Optq<double>/$size/" "^BM_Optq<float>/$size/" "^BM_OptqStochastic/$size/" \
            "^BM_Qronos/$size/" "^BM_QronosCorrection/$size/" $ref
done
# The formats (ggml type ids: 2 Q4_0, 12 Q4_K, 11 Q3_K, 10 Q2_K), each case over its own plain call.
if [ -z "${SIZES:-}" ]; then
  for t in 2 12 11 10; do
    run_cases "^BM_Format<Into::Optq>/4096/4096/$t/" "^BM_Format<Into::Optq>/11008/4096/$t/"
  done
  run_cases '^BM_Format<Into::Stochastic>/' '^BM_Format<Into::Qronos>/'
fi
for size in 2048/768 2048/4096; do
  [ -n "${SIZES:-}" ] || run_cases "^BM_GramAdd/$size/" "^BM_GramGemm/$size/"
done
