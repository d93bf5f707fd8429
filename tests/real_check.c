/* real_check: the same wavefunction evaluated by a double and a float build of psiformer.h.
 *
 * `make test` compiles this file twice (PSF_REAL double, and -DPSF_REAL=float) and the test
 * float_build_agrees_with_double compares the two outputs. Both builds start from the same numbers: the carbon
 * Psiformer of the driver's defaults, initialised from seed 7 in double and rounded to float, evaluated at 8
 * configurations drawn in double (electrons Gaussian around the nucleus, 1.2 bohr) and rounded to float. So the
 * two outputs differ only by the float arithmetic of the network, its jet and its backward pass.
 *
 * Output, one line per configuration c: "c sign log|psi| kinetic E_L |grad|^2" (hartree; log|psi| of psi in
 * bohr^(-3N/2)), then for configurations 0 and 1 the P derivatives d log|psi| / d theta, one per line. */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    psf_system sys;
    psf_config cfg;
    psf_model m;
    psf_workspace ws;
    if (psf_system_atom(&sys, "C", -1) != PSF_OK) { fprintf(stderr, "real_check: %s\n", psf_last_error()); return 1; }
    psf_config_default(&cfg);
    if (psf_model_init(&m, &sys, &cfg, 7) != PSF_OK || psf_workspace_init(&ws, &m) != PSF_OK) {
        fprintf(stderr, "real_check: %s\n", psf_last_error());
        return 1;
    }
    for (size_t p = 0; p < m.n_params; p++) m.params[p] = (psf_real)(float)m.params[p];
    const int D = m.n_dim;
    psf_real *x = (psf_real *)calloc((size_t)D, sizeof(psf_real)), *grad = (psf_real *)calloc((size_t)D, sizeof(psf_real));
    psf_real *dp = (psf_real *)calloc(m.n_params, sizeof(psf_real));
    if (!x || !grad || !dp) { fprintf(stderr, "real_check: out of memory\n"); return 1; }
    psf_rng rng;
    psf_rng_seed(&rng, 11, 0);
    psf_wavefunction wf = psf_model_wavefunction(&m);
    for (int c = 0; c < 8; c++) {
        for (int d = 0; d < D; d++) x[d] = (psf_real)(float)(1.2 * psf_rng_normal(&rng));
        psf_eloc e;
        psf_local_energy(&m.sys, &wf, &ws, x, grad, &e);
        double g2 = 0;
        for (int d = 0; d < D; d++) g2 += (double)grad[d] * grad[d];
        int sign = 0;
        const double lp = psf_model_logpsi(&m, &ws, x, &sign);
        printf("%d %d %.17g %.17g %.17g %.17g\n", c, sign, lp, e.kinetic, e.total, g2);
        if (c < 2) {
            memset(dp, 0, sizeof(psf_real) * m.n_params);
            psf_model_backward(&m, &ws, 1.0, dp);
            for (size_t p = 0; p < m.n_params; p++) printf("%.9g\n", (double)dp[p]);
        }
    }
    free(x); free(grad); free(dp);
    psf_workspace_free(&ws);
    psf_model_free(&m);
    return 0;
}
