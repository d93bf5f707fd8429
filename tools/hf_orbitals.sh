#!/bin/sh
# tools/hf_orbitals.sh FILE.xyz CHARGE SPIN [BASIS]
#
# Unrestricted Hartree-Fock of the molecule in FILE.xyz (line 1: atom count, line 2: comment, then
# "Symbol x y z" in angstrom) with psi4 (Debian: apt-get install psi4), symmetry c1, charge CHARGE and
# SPIN = n_up - n_down (psi4's multiplicity is SPIN + 1), in BASIS (default cc-pVDZ). Leaves FILE.molden
# (psi4's Molden writer: the alpha and beta orbitals with their occupations) next to FILE.xyz and prints
#     SCF_ENERGY <E in hartree>
# as its last line. The psi4 input and output stay in FILE.psi4/ (input.dat, output.dat). PUREAM=false in the
# environment asks psi4 for cartesian d and f functions (default: the basis set's own choice).
set -eu
if [ $# -lt 3 ] || [ $# -gt 4 ]; then
    echo "usage: $0 FILE.xyz CHARGE SPIN [BASIS]" >&2
    exit 2
fi
xyz=$1 charge=$2 spin=$3 basis=${4:-cc-pVDZ}
[ -r "$xyz" ] || { echo "$0: cannot read $xyz" >&2; exit 2; }
case $charge in ''|*[!0-9-]*) echo "$0: CHARGE must be an integer, got '$charge'" >&2; exit 2;; esac
case $spin in ''|*[!0-9]*) echo "$0: SPIN (n_up - n_down) must be a non-negative integer, got '$spin'" >&2; exit 2;; esac
command -v psi4 >/dev/null || { echo "$0: psi4 not found (Debian: apt-get install psi4)" >&2; exit 2; }
puream_line=
case ${PUREAM:-} in '') ;; true|false) puream_line="  puream $PUREAM";; *) echo "$0: PUREAM must be true or false" >&2; exit 2;; esac
base=${xyz%.xyz}
molden=$(cd "$(dirname "$base")" && pwd)/$(basename "$base").molden
work=$base.psi4
mkdir -p "$work"
n=$(sed -n 1p "$xyz" | tr -d ' \t\r')
case $n in ''|*[!0-9]*) echo "$0: $xyz: line 1 must be the atom count, got '$n'" >&2; exit 2;; esac
geom=$(sed -n "3,$((n + 2))p" "$xyz")
[ "$(printf '%s\n' "$geom" | grep -c .)" -eq "$n" ] || { echo "$0: $xyz: expected $n atom lines after the comment" >&2; exit 2; }
cat > "$work/input.dat" <<PSI4
# written by tools/hf_orbitals.sh from $xyz
memory 500 mb
molecule {
$charge $((spin + 1))
$geom
units angstrom
symmetry c1
no_reorient
no_com
}
set {
  basis $basis
  reference uhf
  scf_type pk
  e_convergence 1e-10
  d_convergence 1e-8
  guess sad
$puream_line
}
e, wfn = energy('scf', return_wfn=True)
molden(wfn, '$molden')
print_out('\nSCF_ENERGY %.12f\n' % e)
PSI4
(cd "$work" && psi4 -n 1 input.dat output.dat) || { echo "$0: psi4 failed (see $work/output.dat)" >&2; exit 1; }
[ -s "$molden" ] || { echo "$0: psi4 wrote no $molden (see $work/output.dat)" >&2; exit 1; }
e=$(sed -n 's/^SCF_ENERGY //p' "$work/output.dat" | tail -n 1)
[ -n "$e" ] || { echo "$0: no SCF energy in $work/output.dat" >&2; exit 1; }
echo "wrote $molden"
echo "SCF_ENERGY $e"
