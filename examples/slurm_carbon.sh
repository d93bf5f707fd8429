#!/bin/bash
# examples/slurm_carbon.sh — carbon with FermiNet's protocol (4096 walkers, 2 x 10^5 iterations, KFAC) on a SLURM
# cluster: one MPI rank per node, its OpenMP threads on the node's cores. docs/scaling.md projects the wall time
# (with KFAC, about 13 hours on 8 two-core nodes and 3 on 64) and the bytes each rank exchanges per iteration.
#
#   make MPI=1 build/mpi/psiformer        (mpicc; Debian: openmpi-bin libopenmpi-dev, or the cluster's MPI module)
#   sbatch examples/slurm_carbon.sh       submit; `sbatch examples/slurm_carbon.sh --restore` resumes
#
# The walkers are split over the ranks by chunks of a fixed reduction tree (at most 32 ranks, one per chunk, unless built with -DPSF_CHUNKS=R), and
# every reduction keeps the single-process order: the same seed and batch give the same bits on 1 node or on 64.
# Rank 0 writes runs/carbon-mpi/ (a shared filesystem is assumed: every rank reads the checkpoint on --restore).
# A job that hits its time limit loses at most --checkpoint-every steps; resubmit with --restore to continue.
#SBATCH --job-name=psiformer-C
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=2
#SBATCH --time=48:00:00
#SBATCH --output=psiformer-C-%j.out
set -euo pipefail
out=runs/carbon-mpi
restore=()
if [ "${1:-}" = "--restore" ]; then restore=(--restore "$out/checkpoint.bin"); fi
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-2} OMP_WAIT_POLICY=passive OMP_PROC_BIND=close
srun --cpu-bind=cores build/mpi/psiformer --atom C --optimizer kfac --batch 4096 --steps 200000 \
    --threads "$OMP_NUM_THREADS" --checkpoint-every 500 --eval-steps 2000 --seed 1 --out "$out" "${restore[@]}"
