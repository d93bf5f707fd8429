/* molden_check FILE.molden E_REF E_NN MAX_ERR [SWEEPS] — the end-to-end check of `make molden-check` (issue 10, item 2).
 *
 * VMC of the bare determinant of the occupied orbitals in FILE.molden (psf_molden_load, psf_molden_system,
 * psf_reference_molden, psf_reference_wavefunction): 512 walkers sample |psi_ref|^2 by Metropolis (moves scaled by
 * the distance to the nuclei), 2000 sweeps of burn-in, then SWEEPS sweeps (default 6000) with the mean local energy
 * (psf_local_energy: kinetic, electron-nuclear, electron-electron and nuclear repulsion) every second sweep,
 * reblocked for its error bar. With the orbitals of a converged SCF, <psi_ref|H|psi_ref> is the SCF energy E_REF
 * that the program wrote (the same basis and Hamiltonian), so the check passes when |E - E_REF| < 3 error bars,
 * the error bar is below MAX_ERR (hartree: small beside the correlation energy, else the check would mean little)
 * and the nuclear repulsion of the system read from the file equals the program's E_NN within 1e-6 Ha (the
 * geometry's units and the Hamiltonian's constant term).
 * Prints one line with the nuclear repulsion energy and the result; exit status 0 (pass), 1 (fail), 2 (usage or
 * unreadable file). */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

int main(int argc, char **argv) {
    if (argc < 5 || argc > 6) {
        fprintf(stderr, "usage: molden_check FILE.molden E_REF E_NN MAX_ERR [SWEEPS]\n");
        return 2;
    }
    const double e_ref = atof(argv[2]), e_nn = atof(argv[3]), max_err = atof(argv[4]);
    const int sweeps = argc > 5 ? atoi(argv[5]) : 6000;
    if (sweeps < 8) { fprintf(stderr, "molden_check: SWEEPS must be at least 8\n"); return 2; }
    psf_molden mol;
    psf_system sys;
    psf_reference ref;
    if (psf_molden_load(&mol, argv[1]) || psf_molden_system(&mol, &sys) || psf_reference_molden(&ref, &mol)) {
        fprintf(stderr, "molden_check: %s\n", psf_last_error());
        return 2;
    }
    psf_wavefunction wf = psf_reference_wavefunction(&ref);
    enum { B = 512, EVERY = 2 };
#ifdef _OPENMP
    const int T = omp_get_max_threads();
#else
    const int T = 1;
#endif
    const int D = 3 * wf.n_elec, n = sweeps / EVERY;
    void **ws = (void **)calloc((size_t)T, sizeof(void *));
    double *series = (double *)malloc(sizeof(double) * (size_t)n), *eloc = (double *)malloc(sizeof(double) * B);
    if (!ws || !series || !eloc) { fprintf(stderr, "molden_check: out of memory\n"); return 2; }
    for (int t = 0; t < T; t++) if (!(ws[t] = wf.ws_new(wf.ctx))) { fprintf(stderr, "molden_check: out of memory\n"); return 2; }
    psf_walkers w;
    if (psf_walkers_init(&w, &sys, B, 17) || (w.scale_moves = 1, psf_walkers_refresh(&w, &wf, ws, T))) {
        fprintf(stderr, "molden_check: %s\n", psf_last_error());
        return 2;
    }
    for (int s = 0; s < 2000; s++) psf_mcmc_adapt(&w, psf_mcmc(&w, &wf, ws, T, 1));
    double pmove = 0;
    for (int s = 0; s < n; s++) {
        pmove += psf_mcmc(&w, &wf, ws, T, EVERY) / n;
#pragma omp parallel for
        for (int b = 0; b < B; b++) {
#ifdef _OPENMP
            const int t = omp_get_thread_num();
#else
            const int t = 0;
#endif
            psf_real g[3 * PSF_MAX_ELEC];
            psf_eloc el;
            psf_local_energy(&sys, &wf, ws[t], w.x + (size_t)b * D, g, &el);
            eloc[b] = el.total;
        }
        series[s] = 0;
        for (int b = 0; b < B; b++) series[s] += eloc[b] / B;
    }
    double mean, err;
    int block;
    if (psf_reblock(series, n, &mean, &err, &block)) { fprintf(stderr, "molden_check: %s\n", psf_last_error()); return 2; }
    const double vnn = psf_nuclear_repulsion(&sys);
    const int nn_ok = fabs(vnn - e_nn) < 1e-6;
    const int pass = nn_ok && isfinite(mean) && block > 0 && err < max_err && fabs(mean - e_ref) < 3 * err;
    printf("%s: %d atoms, %d up, %d down, %d basis functions, nuclear repulsion %.8f Ha (SCF program: %.8f); VMC of "
           "the determinant %.5f +/- %.5f Ha (%d sweeps x %d walkers, pmove %.2f, block %d), SCF %.6f Ha: %+.1f error "
           "bars -> %s\n", argv[1], sys.n_atoms, sys.n_up, sys.n_down, mol.n_bf, vnn, e_nn, mean, err, sweeps, B, pmove,
           block, e_ref, (mean - e_ref) / err,
           pass ? "pass" : !nn_ok ? "FAIL (nuclear repulsion)" : err >= max_err || block <= 0 ? "FAIL (error bar)" : "FAIL");
    for (int t = 0; t < T; t++) wf.ws_free(wf.ctx, ws[t]);
    psf_walkers_free(&w);
    psf_molden_free(&mol);
    free(ws); free(series); free(eloc);
    return pass ? 0 : 1;
}
