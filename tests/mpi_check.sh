#!/bin/sh
# tests/mpi_check.sh PLAIN MPI WORK — `make mpi-check` (issue 13): the same seed and batch give the same bits on one
# process and on 2 MPI ranks.
#   PLAIN  the driver built without MPI (build/psiformer), run with 2 OpenMP threads
#   MPI    the driver built with PSF_USE_MPI (build/mpi/psiformer), run as 1 process with 2 threads and as
#          2 ranks x 1 thread under mpirun
# For He and Li (odd N) with KFAC, Adam and SPRING, SPRING's double kernel and Be with the Pfaffian head (short runs:
# HF pretraining, training with the gap diagnostic, evaluation), the three runs must agree bitwise: the final
# checkpoints (parameters, walkers, RNG states, optimizer state) byte for byte, every column of train_stats.csv and
# eval_stats.csv but the wall-clock seconds, and summary.json's energy, error bar and variance. Then a checkpoint
# written by 2 ranks is restored on 1 process, and the continued run must equal one that was never interrupted; and
# 3 ranks for a batch of 2 walkers are refused with the reason. Exit status 0 when everything agrees.
set -u
plain=$1 mpi=$2 work=${3:-build/mpi-check}
rm -rf "$work"; mkdir -p "$work"
command -v mpirun >/dev/null || { echo "make mpi-check: mpirun not found (Debian: apt-get install openmpi-bin libopenmpi-dev)"; exit 1; }
# OpenMPI refuses root unless told (CI runs as root); --oversubscribe: 2 ranks on any machine
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=passive
run2="mpirun --allow-run-as-root --oversubscribe -np 2"
common="--batch 64 --pretrain-steps 10 --eval-steps 20 --gap-every 10 --checkpoint-every 1000 --seed 3 --print-every 1000"
fail=0

# same FILE in directories A and B: byte for byte (checkpoints) or all columns but 'seconds' (CSVs)
same() {
    case $3 in
    *.bin) cmp -s "$1/$3" "$2/$3" ;;
    *) cut -d, -f1-4,6- "$1/$3" > "$work/a.tmp" 2>/dev/null && cut -d, -f1-4,6- "$2/$3" > "$work/b.tmp" 2>/dev/null &&
       if [ "$3" = eval_stats.csv ]; then cmp -s "$1/$3" "$2/$3"; else cmp -s "$work/a.tmp" "$work/b.tmp"; fi ;;
    esac
}
check() { # label dir-a dir-b
    bad=0
    for f in checkpoint.bin train_stats.csv eval_stats.csv; do
        if [ ! -s "$2/$f" ] || [ ! -s "$3/$f" ]; then echo "FAIL $1: $f missing"; bad=1
        elif ! same "$2" "$3" "$f"; then echo "FAIL $1: $f differs ($2 against $3)"; bad=1; fi
    done
    # summary.json: the evaluated energy, its error bar and the variance, as printed
    grep -E '"(energy|energy_error|variance)":' "$2/summary.json" > "$work/a.tmp" 2>/dev/null
    grep -E '"(energy|energy_error|variance)":' "$3/summary.json" > "$work/b.tmp" 2>/dev/null
    if [ "$(wc -l < "$work/a.tmp")" -ne 3 ] || ! cmp -s "$work/a.tmp" "$work/b.tmp"; then
        echo "FAIL $1: summary.json energy, error bar or variance differ"; bad=1; fi
    e=$(sed -n 's/.*"energy": *\([-0-9.e]*\).*/\1/p' "$3/summary.json" | head -n 1)
    [ $bad -eq 0 ] && echo "ok   $1: checkpoint, training and evaluation identical (E = $e Ha)"
    [ $bad -eq 0 ] || fail=1
}
# atom optimizer extra-flags (name): the optimizers on an even and an odd N, then SPRING's double-precision kernel
# (its tiles through the matrix product) and the Pfaffian head
while read -r atom opt extra; do
    tag=$atom-$opt${extra:+-x}; d=$work/$tag; label="$atom $opt${extra:+ $extra}"
    "$plain" --atom $atom --optimizer $opt --steps 20 $common $extra --threads 2 --out "$d-plain" < /dev/null > "$d-plain.log" 2>&1 || { echo "FAIL $label: plain run (log $d-plain.log)"; fail=1; continue; }
    "$mpi" --atom $atom --optimizer $opt --steps 20 $common $extra --threads 2 --out "$d-1" < /dev/null > "$d-1.log" 2>&1 || { echo "FAIL $label: 1-process MPI run (log $d-1.log)"; fail=1; continue; }
    $run2 "$mpi" --atom $atom --optimizer $opt --steps 20 $common $extra --threads 1 --out "$d-2" < /dev/null > "$d-2.log" 2>&1 || { echo "FAIL $label: 2-rank run (log $d-2.log)"; fail=1; continue; }
    grep -q "on each of 2 MPI ranks" "$d-2.log" || { echo "FAIL $label: the 2-rank run did not run on 2 ranks"; fail=1; }
    check "$label, 1 process (no MPI) = 2 ranks" "$d-plain" "$d-2"
    check "$label, 1 MPI process = 2 ranks" "$d-1" "$d-2"
done <<LIST
He kfac
He adam
He spring
Li kfac
Li adam
Li spring
Li spring --spring-fp64 1
Be spring --orbitals pfaffian
LIST
# restart: 2 ranks train 10 of 20 steps and stop; 1 process restores and trains to 20; against the uninterrupted run
# on 1 process (no anneal: it depends on --steps)
d=$work/restart
"$plain" --atom Li --optimizer spring --steps 20 --anneal 0 $common --threads 2 --out "$d-ref" > "$d-ref.log" 2>&1 || { echo "FAIL restart: reference run (log $d-ref.log)"; fail=1; }
$run2 "$mpi" --atom Li --optimizer spring --steps 10 --anneal 0 $common --threads 1 --out "$d" > "$d-a.log" 2>&1 || { echo "FAIL restart: 2-rank first half (log $d-a.log)"; fail=1; }
"$plain" --atom Li --optimizer spring --steps 20 --anneal 0 $common --threads 2 --restore "$d/checkpoint.bin" --out "$d" > "$d-b.log" 2>&1 || { echo "FAIL restart: restored run (log $d-b.log)"; fail=1; }
check "Li spring, 2 ranks for 10 steps then 1 process restored for 10 = 20 steps on 1 process" "$d-ref" "$d"
# more ranks than reduction chunks (a batch of 2 has 2): refused with the reason, non-zero exit, no hang
if mpirun --allow-run-as-root --oversubscribe -np 3 "$mpi" --atom He --batch 2 --steps 2 --pretrain-steps 0 --eval-steps 2 \
        --threads 1 --out "$work/toomany" < /dev/null > "$work/toomany.log" 2>&1; then
    echo "FAIL 3 ranks for a batch of 2: accepted"; fail=1
elif grep -q "3 MPI ranks for 2 reduction chunks" "$work/toomany.log"; then
    echo "ok   3 ranks for a batch of 2 walkers: refused (\"3 MPI ranks for 2 reduction chunks\")"
else echo "FAIL 3 ranks for a batch of 2: no message (log $work/toomany.log)"; fail=1; fi
[ $fail -eq 0 ] && echo "make mpi-check: all runs agree bitwise" || echo "make mpi-check: FAILED"
exit $fail
