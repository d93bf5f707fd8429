/* molden_overlap FILE.molden TOL — part of `make molden-check` (issue 10, item 2): the overlap matrix
 * <phi_i|phi_j> of all alpha orbitals of a multi-centre Molden file, by importance sampling (400000 points drawn from
 * Gaussians of widths 0.02..2.5 bohr around the nuclei, a fixed seed), must be the identity within TOL. The SCF
 * program's orbitals are orthonormal in its own basis, so this checks the reader's conventions — normalisation,
 * component order and signs of d and f functions — against the program's: with two components of every d shell
 * swapped (psi4, H2O in cc-pVTZ) the worst entry is 2.75 where the sampling noise is about 0.01. Exit status 0
 * (pass), 1 (fail), 2 (usage or unreadable file). */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: molden_overlap FILE.molden TOL\n"); return 2; }
    const double tol = atof(argv[2]), pi = 3.14159265358979323846;
    psf_molden m;
    if (psf_molden_load(&m, argv[1])) { fprintf(stderr, "molden_overlap: %s\n", psf_last_error()); return 2; }
    const int nb = m.n_bf;
    int n = 0;
    for (int k = 0; k < m.n_mo; k++) n += m.spin[k] == 0;
    static const double sig[5] = {0.02, 0.08, 0.3, 0.9, 2.5};
    double *S = (double *)calloc((size_t)n * n, sizeof(double)), *v = (double *)malloc(sizeof(double) * nb),
           *phi = (double *)malloc(sizeof(double) * n);
    int *alpha = (int *)malloc(sizeof(int) * (n + 1));
    if (!S || !v || !phi || !alpha) { fprintf(stderr, "molden_overlap: out of memory\n"); return 2; }
    for (int k = 0, i = 0; k < m.n_mo; k++) if (m.spin[k] == 0) alpha[i++] = k;
    psf_rng r;
    psf_rng_seed(&r, 1, 0);
    const long N = 400000;
    for (long t = 0; t < N; t++) {
        const int a = (int)(psf_rng_uniform(&r) * m.n_atoms), k = (int)(psf_rng_uniform(&r) * 5);
        psf_real x[3];
        for (int c = 0; c < 3; c++) x[c] = m.R[3 * a + c] + sig[k] * psf_rng_normal(&r);
        double p = 0; /* the sampling density: the mixture of all atoms' and widths' Gaussians */
        for (int b = 0; b < m.n_atoms; b++)
            for (int q = 0; q < 5; q++) {
                double d2 = 0;
                for (int c = 0; c < 3; c++) d2 += (x[c] - m.R[3 * b + c]) * (x[c] - m.R[3 * b + c]);
                p += exp(-d2 / (2 * sig[q] * sig[q])) / pow(2 * pi * sig[q] * sig[q], 1.5) / (5.0 * m.n_atoms);
            }
        psf_molden_basis(&m, x, v, NULL, NULL);
        for (int i = 0; i < n; i++) {
            phi[i] = 0;
            for (int b = 0; b < nb; b++) phi[i] += m.mo[(size_t)alpha[i] * nb + b] * v[b];
        }
        for (int i = 0; i < n; i++)
            for (int j = 0; j <= i; j++) S[(size_t)i * n + j] += phi[i] * phi[j] / p / N;
    }
    double worst = 0;
    int wi = 0, wj = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j <= i; j++) {
            const double e = fabs(S[(size_t)i * n + j] - (i == j));
            if (e > worst) { worst = e; wi = i; wj = j; }
        }
    const int pass = worst < tol;
    printf("%s: %d alpha orbitals over %d basis functions on %d atoms; worst |<i|j> - delta_ij| = %.4f at (%d, %d) "
           "by importance sampling (%ld points; tolerance %g) -> %s\n", argv[1], n, nb, m.n_atoms, worst, wi + 1, wj + 1,
           N, tol, pass ? "pass" : "FAIL");
    free(S); free(v); free(phi); free(alpha);
    psf_molden_free(&m);
    return pass ? 0 : 1;
}
