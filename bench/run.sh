#!/bin/sh
# run.sh — `make bench` (issue 4, "Benchmarks"): throughput of psiformer.h beside the PyTorch reference.
#
#   sh bench/run.sh [BUILD_DIR]     (`make bench` builds BUILD_DIR/bench, export and, with OpenBLAS, bench_blas and
#                                    bench_peak first)
#
# Environment: BENCH_QUICK=1 for a reduced run (< 1 minute); BENCH_THREADS (default: all cores) for the table;
# BENCH_BLAS=1 (the Makefile passes its BLAS) makes the OpenBLAS build the main one, as in the library's default
# build; BENCH_OUT (default bench/out); PYTHON (default /usr/bin/python3, Debian's python3-torch — without torch
# the PyTorch columns stay empty). Steps, each appending to a CSV in BENCH_OUT:
#   1. peak.csv   at 1 and BENCH_THREADS threads: an FMA loop in registers, float64 and float32 (the cores' rate),
#                 and with OpenBLAS a large dgemm (issue 4's FP64 peak)                          (bench_peak)
#   2. c.csv      tag=table:   log|psi|, local energy, training iteration, every atom x width x batch (main build)
#                 tag=onoff:   the other build (built-in loops), batch 256
#                 tag=scaling: 1 and BENCH_THREADS threads, default width, batch 256
#                 tag=paper:   carbon with the Psiformer paper's network (4 layers, 4 x 64, MLP 256, 16 dets)
#                 tag=adam:    a training iteration with Adam (He, C), against PyTorch's train_* methods; also
#                              from the float build (bench_f32, build name "builtin-f32"), against PyTorch float32
#                 tag=mcmc:    10 Metropolis sweeps of batch 256, the walkers in blocks (psf_model_logpsi_block)
#                              and one at a time: the same chains, so the ratio is the blocks' speed-up
#                 tag=gram:    SPRING's B x B kernel in float32 (the driver's optimizer), carbon, B = 512 (make
#                              run's) and 1024 (the 55-minute recipe's), 1 and BENCH_THREADS threads
#   3. ops.csv    per-op profile of the carbon jet pass, both builds, one thread
#   4. torch.csv  the PyTorch reference on the same models (export directories in BENCH_OUT/params/); float64, and
#                 the carbon training iteration in float32 too (--dtype float32: PyTorch's best case)
#   5. report.py  merges everything into bench.csv, prints the tables, ratios, % of peak and the fitted
#                 electron-count exponents (also written to summary.txt)
# Nothing here fails because something is slow; timings are never asserted.
set -eu

BUILD=${1:-build}
OUT=${BENCH_OUT:-bench/out}
PYTHON=${PYTHON:-/usr/bin/python3}
QUICK=${BENCH_QUICK:-0}
T=${BENCH_THREADS:-$(nproc 2>/dev/null || echo 1)}
HERE=$(dirname "$0")

ATOMS=He,Be,C,Ne
if [ "$QUICK" = 1 ]; then
    HDS=16,8; BATCHES=256; BUDGET=0; PEAK="--n 1024 --budget 0.3"; OPS_REPS=3
    SCALE_ATOMS=C; SCALE_METRICS=eloc; ONOFF_HDS=16; ONOFF_METRICS=logpsi,eloc
    TORCH_CONFIGS="He:16 C:16"; TORCH_FUNC_CONFIGS="He:16 C:16"; TORCH_BIG_CONFIGS=""; TORCH_BUDGET=0.5; LOOP_WALKERS=4
    PAPER_METRICS=eloc; TORCH_PAPER=0; ADAM_ATOMS=C; TORCH_TRAIN_CONFIGS="C:16"; GRAM_BATCHES=512
else
    HDS=16,8,32; BATCHES=256,1024; BUDGET=0.5; PEAK="--n 2048 --budget 1"; OPS_REPS=10
    SCALE_ATOMS=$ATOMS; SCALE_METRICS=logpsi,eloc,train; ONOFF_HDS=16,8,32; ONOFF_METRICS=logpsi,eloc,train
    TORCH_CONFIGS="He:16 Be:16 C:16 Ne:16 He:8 Be:8 C:8 Ne:8 He:32 Be:32 C:32 Ne:32"
    TORCH_FUNC_CONFIGS="He:16 Be:16 C:16 Ne:16"; TORCH_BIG_CONFIGS="He:16 Be:16 C:16"; TORCH_BUDGET=1; LOOP_WALKERS=16
    PAPER_METRICS=eloc,train; TORCH_PAPER=1; ADAM_ATOMS=He,C; TORCH_TRAIN_CONFIGS="He:16 C:16"; GRAM_BATCHES=512,1024
fi

# The main table uses the library's default build: OpenBLAS when the Makefile found it (BENCH_BLAS=1), else the
# built-in loops; the other build is measured at batch 256 for the on / off comparison.
if [ "${BENCH_BLAS:-0}" = 1 ] && [ -x "$BUILD/bench_blas" ]; then
    MAIN="$BUILD/bench_blas"; OTHER="$BUILD/bench"
else
    MAIN="$BUILD/bench"; OTHER=""
fi
# the library sets OpenBLAS to one thread in psf_vmc_init (parallelism is over walkers); the same here throughout
export OPENBLAS_NUM_THREADS=1

mkdir -p "$OUT"
rm -f "$OUT/peak.csv" "$OUT/c.csv" "$OUT/ops.csv" "$OUT/torch.csv" "$OUT/bench.csv" "$OUT/fit.csv" "$OUT/summary.txt"
t_start=$(date +%s)
echo "bench: $(uname -m), $(nproc 2>/dev/null || echo '?') cores, load average $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')" \
     "- numbers are indicative on a shared machine; quick=$QUICK threads=$T main build: $(basename "$MAIN")"

echo "== 1. peaks: FMA loop (float64, float32) and, with OpenBLAS, its dgemm"
if [ -x "$BUILD/bench_peak" ]; then
    # shellcheck disable=SC2086
    OPENBLAS_NUM_THREADS=$T "$BUILD/bench_peak" $PEAK --threads "1,$T" --csv "$OUT/peak.csv"
else
    echo "   (no $BUILD/bench_peak: no % of peak)"
fi

echo "== 2a. throughput table ($T threads, $(basename "$MAIN"))"
"$MAIN" --atoms "$ATOMS" --head-dims "$HDS" --batches "$BATCHES" --threads "$T" --budget "$BUDGET" \
    --tag table --csv "$OUT/c.csv"

if [ -n "$OTHER" ]; then
    echo "== 2b. OpenBLAS off: the built-in loops ($T threads, batch 256)"
    "$OTHER" --atoms "$ATOMS" --head-dims "$ONOFF_HDS" --batches 256 --threads "$T" --metrics "$ONOFF_METRICS" \
        --budget "$BUDGET" --tag onoff --csv "$OUT/c.csv"
fi

echo "== 2c. thread scaling (1 -> $T threads, default network, batch 256)"
"$MAIN" --atoms "$SCALE_ATOMS" --head-dims 16 --batches 256 --threads "1,$T" --metrics "$SCALE_METRICS" \
    --budget "$BUDGET" --tag scaling --csv "$OUT/c.csv"
if [ -n "$OTHER" ]; then
    "$OTHER" --atoms "$SCALE_ATOMS" --head-dims 16 --batches 256 --threads "1,$T" --metrics eloc \
        --budget "$BUDGET" --tag scaling --csv "$OUT/c.csv"
fi

echo "== 2d. the Psiformer paper's carbon network (4 layers, 4 x 64 heads, MLP 256, 16 determinants; batch 256)"
"$MAIN" --atoms C --head-dims 64 --layers 4 --mlp 256 --dets 16 --batches 256 --threads "$T" --metrics "$PAPER_METRICS" \
    --budget 0 --tag paper --csv "$OUT/c.csv"

echo "== 2e. a training iteration with Adam, the optimizer of the PyTorch training comparison (batch 256)"
"$MAIN" --atoms "$ADAM_ATOMS" --head-dims 16 --batches 256 --threads "$T" --metrics train --optimizer adam \
    --budget "$BUDGET" --tag adam --csv "$OUT/c.csv"
if [ -x "$BUILD/bench_f32" ]; then # the same in the float build (PSF_REAL float), against PyTorch in float32
    "$BUILD/bench_f32" --atoms "$ADAM_ATOMS" --head-dims 16 --batches 256 --threads "$T" --metrics train \
        --optimizer adam --budget "$BUDGET" --tag adam --csv "$OUT/c.csv"
fi

echo "== 2f. Metropolis sweeps: walkers in blocks of PSF_WALKER_BLOCK against one at a time (batch 256)"
"$MAIN" --atoms "$ATOMS" --head-dims 16 --batches 256 --threads "$T" --metrics mcmc --budget "$BUDGET" \
    --tag mcmc --csv "$OUT/c.csv"

echo "== 2g. SPRING's kernel: the B x B product of O-bar in float32, carbon, batch $GRAM_BATCHES (1 and $T threads)"
"$MAIN" --atoms C --head-dims 16 --batches "$GRAM_BATCHES" --threads "1,$T" --metrics gram --budget "$BUDGET" \
    --tag gram --csv "$OUT/c.csv"

echo "== 3. per-op profile of the carbon jet pass (one thread)"
for b in "$MAIN" $OTHER; do "$b" --ops C --reps "$OPS_REPS" --csv "$OUT/ops.csv"; done

echo "== 4. PyTorch reference (same models, $T threads)"
if "$PYTHON" -c "import torch, numpy" 2>/dev/null; then
    pdir() { echo "$OUT/params/${1%%:*}_d${1##*:}"; }
    dirs=""; fdirs=""; bdirs=""
    for c in $TORCH_CONFIGS; do
        d=$(pdir "$c")
        mkdir -p "$d"
        "$BUILD/export" --atom "${c%%:*}" --layers 2 --heads 4 --head-dim "${c##*:}" --mlp 64 --dets 4 --seed 1 \
            --walkers 8 --out "$d" >/dev/null
        dirs="$dirs $d"
    done
    for c in $TORCH_FUNC_CONFIGS; do fdirs="$fdirs $(pdir "$c")"; done
    for c in $TORCH_BIG_CONFIGS; do bdirs="$bdirs $(pdir "$c")"; done
    # shellcheck disable=SC2086
    "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads "$T" --budget "$TORCH_BUDGET" --methods loop,batched \
        --loop-walkers "$LOOP_WALKERS" --csv "$OUT/torch.csv" $dirs
    # shellcheck disable=SC2086
    "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads "$T" --budget "$TORCH_BUDGET" --methods functorch \
        --csv "$OUT/torch.csv" $fdirs
    # one thread too, at the default width: T processes of one thread each may beat one process of T threads
    # shellcheck disable=SC2086
    "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads 1 --budget "$TORCH_BUDGET" --methods batched,functorch \
        --csv "$OUT/torch.csv" $fdirs
    tdirs=""
    for c in $TORCH_TRAIN_CONFIGS; do tdirs="$tdirs $(pdir "$c")"; done
    # whole training iterations (Adam), against step 2e
    # shellcheck disable=SC2086
    "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads "$T" --budget "$TORCH_BUDGET" \
        --methods train_batched,train_functorch --csv "$OUT/torch.csv" $tdirs
    # carbon's training iteration again in float32 (FermiNet trains in float32: PyTorch's fair best case), beside
    # C in float64; checked in float64 against C first, then timed on a float32 copy (a few seconds)
    "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads "$T" --budget "$TORCH_BUDGET" --dtype float32 \
        --methods train_batched --csv "$OUT/torch.csv" "$(pdir C:16)"
    if [ "$TORCH_PAPER" = 1 ]; then # the paper's carbon network: the batched methods, one pass each
        pd="$OUT/params/C_paper"
        mkdir -p "$pd"
        "$BUILD/export" --atom C --layers 4 --heads 4 --head-dim 64 --mlp 256 --dets 16 --seed 1 --walkers 8 \
            --out "$pd" >/dev/null
        "$PYTHON" "$HERE/bench_torch.py" --batches 256 --threads "$T" --budget 0 --methods batched,functorch \
            --csv "$OUT/torch.csv" "$pd"
    fi
    if [ -n "$bdirs" ]; then
        # batch 1024 for the smaller atoms, where a larger batch amortises PyTorch's per-op overhead
        # shellcheck disable=SC2086
        "$PYTHON" "$HERE/bench_torch.py" --batches 1024 --threads "$T" --budget 0 --methods batched,functorch \
            --csv "$OUT/torch.csv" $bdirs
    fi
else
    echo "   ($PYTHON cannot import torch and numpy: PyTorch columns left empty; apt-get install python3-torch)"
fi

echo "== 5. report"
REPORT_PY=$PYTHON  # report.py needs only the standard library
command -v "$REPORT_PY" >/dev/null 2>&1 || REPORT_PY=python3
if command -v "$REPORT_PY" >/dev/null 2>&1; then
    "$REPORT_PY" "$HERE/report.py" --out "$OUT" --threads "$T" | tee "$OUT/summary.txt"
else
    echo "   (no Python: the raw CSVs are in $OUT)"
fi
echo "== 6. MPI: 1 rank x $T threads against $T ranks x 1 thread (carbon, 20 training steps, batch 512; issue 13)"
if command -v mpicc >/dev/null 2>&1 && command -v mpirun >/dev/null 2>&1 && make -s MPI=1 build/mpi/psiformer >/dev/null; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    mpi_args="--atom C --steps 20 --eval-steps 2 --pretrain-steps 0 --gap-every 0 --checkpoint-every 1000 --print-every 1000"
    step_time() { sed -n 's/^time per training step: \([0-9.]*\) s.*/\1/p' "$1"; }
    build/mpi/psiformer $mpi_args --threads "$T" --out "$OUT/mpi-1x$T" > "$OUT/mpi-1x$T.log" 2>&1
    mpirun --allow-run-as-root --oversubscribe -np "$T" build/mpi/psiformer $mpi_args --threads 1 --out "$OUT/mpi-${T}x1" > "$OUT/mpi-${T}x1.log" 2>&1
    a=$(step_time "$OUT/mpi-1x$T.log"); b=$(step_time "$OUT/mpi-${T}x1.log")
    if [ -n "$a" ] && [ -n "$b" ]; then
        same=$(cmp -s "$OUT/mpi-1x$T/checkpoint.bin" "$OUT/mpi-${T}x1/checkpoint.bin" && echo "identical" || echo "DIFFERENT")
        echo "   1 rank x $T threads: $a s/step; $T ranks x 1 thread: $b s/step; ratio $(awk "BEGIN { printf \"%.2f\", $b / $a }"); checkpoints $same"
    else echo "   (a run failed: $OUT/mpi-*.log)"; fi
else
    echo "   (no mpicc / mpirun: apt-get install openmpi-bin libopenmpi-dev)"
fi
echo "bench: done in $(( $(date +%s) - t_start )) s; CSVs in $OUT/ (bench.csv is the merged table)"
