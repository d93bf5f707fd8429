#!/bin/sh
# crosscheck.sh — the C library against the independent PyTorch reference (issue 4, "Cross-check").
#
#   bench/reference/crosscheck.sh EXPORT_BINARY [OUT_DIR]
#
# For each configuration below, EXPORT_BINARY (built from bench/reference/export.c) writes a random model with
# perturbed LayerNorm / envelope / Jastrow parameters, walker positions and the C results into OUT_DIR/<name>;
# then psiformer_ref.py recomputes log|psi|, sign, gradient, Laplacian and E_L with PyTorch autograd and
# compares. Exits non-zero if any configuration disagrees. PYTHON overrides the interpreter (default
# /usr/bin/python3: Debian's python3-torch and python3-numpy).
set -eu

EXPORT=${1:?usage: crosscheck.sh EXPORT_BINARY [OUT_DIR]}
OUT=${2:-bench/out/crosscheck}
PYTHON=${PYTHON:-/usr/bin/python3}
HERE=$(dirname "$0")
WALKERS=${WALKERS:-8}

# name             atom layers heads head_dim mlp dets layernorm jastrow seed orbitals pf_orbitals
# (pf_orbitals: the Pfaffian head's orbital features F per electron, 0 = the library default 2N; dets = Pfaffians
#  for the Pfaffian head. Its configurations cover even N (He, Be, C) and odd N (H with no down electron, Li, B,
#  N: bordered pair matrices), K = 1 and K > 1, F = N (one determinant), F = N - 1 (odd N, the smallest), F > N,
#  with and without LayerNorm and Jastrow.)
CONFIGS="
he_l1h1k1          He   1 1 4  8  1 1 1 11 det 0
li_l2h2k2          Li   2 2 4  8  2 1 1 12 det 0
c_l3h4k4           C    3 4 4  16 4 1 1 13 det 0
c_l1h2k1_plain     C    1 2 8  8  1 0 0 14 det 0
ne_l2h3k3          Ne   2 3 4  8  3 1 1 15 det 0
ne_l1h4k2          Ne   1 4 8  32 2 1 1 16 det 0
c_default          C    2 4 16 64 4 1 1 17 det 0
pf_he_l1h1k1       He   1 1 4  8  1 1 1 21 pfaffian 0
pf_h_l1h2k2        H    1 2 4  8  2 1 1 22 pfaffian 0
pf_li_l2h2k2       Li   2 2 4  8  2 1 1 23 pfaffian 0
pf_be_l1h2k1_plain Be   1 2 4  8  1 0 0 24 pfaffian 4
pf_b_l2h2k3        B    2 2 4  16 3 1 0 25 pfaffian 8
pf_c_l2h4k4        C    2 4 4  16 4 1 1 26 pfaffian 0
pf_c_l1h2k2_plain  C    1 2 8  8  2 0 0 27 pfaffian 8
pf_n_l2h2k2        N    2 2 4  8  2 1 1 28 pfaffian 6
pf_n_l1h2k1_nojas  N    1 2 4  8  1 1 0 29 pfaffian 0
"

dirs=""
echo "$CONFIGS" | while read -r name atom L H d M K ln jas seed orb F; do
    [ -n "$name" ] || continue
    mkdir -p "$OUT/$name"
    "$EXPORT" --atom "$atom" --layers "$L" --heads "$H" --head-dim "$d" --mlp "$M" --dets "$K" \
        --layernorm "$ln" --jastrow "$jas" --seed "$seed" --walkers "$WALKERS" --orbitals "$orb" --pf-orbitals "$F" \
        --out "$OUT/$name" >/dev/null
done
for name in $(echo "$CONFIGS" | awk 'NF { print $1 }'); do dirs="$dirs $OUT/$name"; done
# shellcheck disable=SC2086
exec "$PYTHON" "$HERE/psiformer_ref.py" $dirs
