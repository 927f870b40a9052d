#!/bin/sh
# `pptq-gguf requantize` on a synthetic llama-7B-shaped block (bench/make_block.cpp), against the plain OPTQ
# calls on the same weights and Hessians (bench/block_optq.cpp): seconds per block, peak RSS, the ratio, and
# the projection to the 32 blocks of a 7B model (docs/performance.md). Builds nothing.
#
#   ./bench/requantize_block.sh [build-dir] [--scale F] [--seed S] [--blocks N] [--format T] [--np P]
#                               [--parts] [--dir DIR] [--keep]
#
#   build-dir   default ./build; needs pptq_make_block, pptq_block_bench (bench/) and pptq-gguf (tools/)
#   --scale F   every dimension times F (default 1: 4096 and 11008), rounded to whole super-blocks of 256
#   --blocks N  N blocks in the model (default 1); the figures are per block
#   --format T  the requantize format (default q4_k)
#   --np P      run the requantize under `mpirun --allow-run-as-root -np P` (pptq-gguf's MPI mode)
#   --parts     the bench also times the format path in-process, with its parts (fit, factor, sweep,
#               refit, pack): about as long again as the requantize
#   --dir DIR   generate into DIR (kept) instead of a temporary directory
#   --keep      keep the temporary directory
#
# Peak RSS is GNU time's "Maximum resident set size": the largest single process (one rank under mpirun).
# The elapsed time of the requantize includes reading the model and the Hessians and writing the output;
# "quantizing" sums the tool's own per-tensor times ("done in ... s"), over all ranks under mpirun.
set -eu
build=build
case ${1:-} in --*|'') ;; *) build=$1; shift ;; esac
scale=1 seed=1 blocks=1 format=q4_k np='' parts='' dir='' keep=''
while [ $# -gt 0 ]; do
  case $1 in
    --scale) scale=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --blocks) blocks=$2; shift 2 ;;
    --format) format=$2; shift 2 ;;
    --np) np=$2; shift 2 ;;
    --parts) parts=yes; shift ;;
    --dir) dir=$2; shift 2 ;;
    --keep) keep=yes; shift ;;
    *) echo "requantize_block.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
for b in bench/pptq_make_block bench/pptq_block_bench tools/pptq-gguf; do
  [ -x "$build/$b" ] || { echo "requantize_block.sh: $build/$b not found (cmake --build $build --target ${b#*/})" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "requantize_block.sh: /usr/bin/time not found (apt-get install time)" >&2; exit 1; }
if [ -n "$np" ] && ! command -v mpirun >/dev/null; then echo "requantize_block.sh: mpirun not found" >&2; exit 1; fi
if [ -z "$dir" ]; then
  dir=$(mktemp -d "${TMPDIR:-/tmp}/pptq_block_XXXXXX")
  [ -n "$keep" ] || trap 'rm -rf "$dir"' EXIT
fi
mkdir -p "$dir"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(nproc)}"
# Under mpirun the ranks share the processors: OMP_NUM_THREADS / P threads each (at least 1).
rank_threads=$OMP_NUM_THREADS
[ -n "$np" ] && rank_threads=$(( OMP_NUM_THREADS / np > 0 ? OMP_NUM_THREADS / np : 1 ))

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m), OMP_NUM_THREADS=$OMP_NUM_THREADS, commit $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "# load average at start$(uptime | sed 's/.*load average//')"
t0=$(date +%s.%N)
"$build/bench/pptq_make_block" --out-dir "$dir" --scale "$scale" --seed "$seed" --blocks "$blocks" | sed 's/^/# /'
echo "# generated in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s; model $(du -m "$dir/block.gguf" | cut -f1) MiB, Hessians $(du -m -s "$dir/hessians" | cut -f1) MiB on disk (q/k/v and gate/up share theirs)"

# The plain OPTQ calls (4-bit per-row grid, the format path's damp), one process.
bench_args=
[ -n "$parts" ] && bench_args="--format $format"
# shellcheck disable=SC2086
"$build/bench/pptq_block_bench" --model "$dir/block.gguf" --hessians "$dir/hessians" $bench_args >"$dir/plain.txt"
sed 's/^/  /' "$dir/plain.txt"
plain=$(awk '$1 == "sum_plain_s" { print $2 }' "$dir/plain.txt")

# The requantize, under GNU time (and mpirun with --np).
set -- "$build/tools/pptq-gguf" requantize --model "$dir/block.gguf" --hessians "$dir/hessians" --format "$format" \
  --output "$dir/out.gguf"
[ -n "$np" ] && set -- env OMP_NUM_THREADS="$rank_threads" mpirun --allow-run-as-root -np "$np" "$@"
echo "# $*"
status=0
/usr/bin/time -v -o "$dir/time.txt" "$@" 2>"$dir/requantize.log" || status=$?
if [ "$status" -ne 0 ]; then
  echo "requantize_block.sh: the requantize failed (exit $status):" >&2
  tail -n 20 "$dir/requantize.log" >&2
  exit "$status"
fi
grep 'done in' "$dir/requantize.log" | sed 's/^pptq-gguf: /  /; s/, H-error.*//; s/, lambda.*//'
echo "# load average at end$(uptime | sed 's/.*load average//')"

# Elapsed "h:mm:ss" or "m:ss.ss" → seconds; maximum RSS in KiB → MiB.
elapsed=$(awk -F': ' '/Elapsed \(wall clock\)/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$dir/time.txt")
rss=$(awk -F': ' '/Maximum resident set size/ { printf "%.0f", $2 / 1024 }' "$dir/time.txt")
quant=$(awk '/done in/ { for (i = 1; i < NF; i++) if ($i == "in" && $(i - 1) == "done") s += $(i + 1) } END { printf "%.2f", s }' "$dir/requantize.log")
awk -v e="$elapsed" -v q="$quant" -v p="$plain" -v b="$blocks" -v r="$rss" -v s="$scale" -v f="$format" -v np="${np:-1}" 'BEGIN {
  printf "plain OPTQ (4-bit per-row), sum over the block:  %8.2f s per block\n", p / b
  printf "requantize --format %s, elapsed:               %8.2f s per block (ranks: %s)\n", f, e / b, np
  printf "  of which quantizing (the tool'\''s per-tensor times): %8.2f s per block\n", q / b
  printf "peak RSS:                                        %8d MiB\n", r
  printf "ratio requantize / plain OPTQ:                   %8.2f (elapsed), %.2f (quantizing)\n", e / p, q / p
  printf "projection for 32 blocks (7B):                   %8.1f min%s\n", 32 * e / b / 60, (s == 1 ? "" : " (at this scale, not 7B)")
}'
