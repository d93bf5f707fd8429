/* real_check: the same wavefunction evaluated by a double and a float build of psiformer.h.
 *
 * `make test` compiles this file twice (PSF_REAL double, and -DPSF_REAL=float) and the test
 * float_build_agrees_with_double compares the two outputs. Both builds start from the same numbers: the carbon
 * Psiformer of the driver's defaults, initialised from seed 7 in double and rounded to float, evaluated at 8
 * configurations drawn in double (electrons Gaussian around the nucleus, 1.2 bohr) and rounded to float. So the
 * two outputs differ only by the float arithmetic of the network, its jet and its backward pass.
 *
 * Output, one line per configuration c: "c sign log|psi| kinetic E_L |grad|^2" (hartree; log|psi| of psi in
 * bohr^(-3N/2)), then for configurations 0 and 1 the P derivatives d log|psi| / d theta, one per line.
 *
 * real_check --kernels checks this build's own kernels directly (the float ones in the float build, which the
 * double test suite never runs): the matrix product against a long double reference of the same inputs, every
 * shape and transpose of the suite's gemm test, within (K + 2) eps sum_k |alpha a_ik b_kj| + eps |beta c_ij| with
 * eps the machine epsilon of psf_real; and psf_model_logpsi_block against psf_model_logpsi, bit for bit. Output:
 * "kernels <worst error / bound> <products checked> <1 if the block pass equals single walkers>"; exit status 1
 * if a bound or the equality fails. */
#define PSF_INTERNAL_TESTS
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include "gemm_check.h"
#include <stdio.h>
#include <stdlib.h>

static int check_kernels(void) {
    double worst;
    int checked;
    const int fail = gemm_check(&worst, &checked);
    if (fail < 0) { fprintf(stderr, "real_check: out of memory\n"); return 1; }
    psf_rng r;
    psf_rng_seed(&r, 13, 0);
    /* the block forward pass of the sampler against single walkers, on the driver's carbon network */
    psf_system sys;
    psf_config cfg;
    psf_model m;
    psf_workspace ws;
    psf_config_default(&cfg);
    if (psf_system_atom(&sys, "C", -1) != PSF_OK || psf_model_init(&m, &sys, &cfg, 7) != PSF_OK ||
        psf_workspace_init(&ws, &m) != PSF_OK) {
        fprintf(stderr, "real_check: %s\n", psf_last_error());
        return 1;
    }
    enum { NW = 19 };
    psf_real x[NW * 3 * 6];
    double lp[NW];
    int sg[NW], same = ws.block > 1 && m.n_dim == 18;
    for (int i = 0; i < NW * m.n_dim && same; i++) x[i] = (psf_real)(1.2 * psf_rng_normal(&r));
    if (same) psf_model_logpsi_block(&m, &ws, NW, x, lp, sg);
    for (int w = 0; w < NW && same; w++) {
        int s1;
        const double l1 = psf_model_logpsi(&m, &ws, x + (size_t)w * m.n_dim, &s1);
        same = s1 == sg[w] && memcmp(&l1, &lp[w], sizeof l1) == 0 && isfinite(l1);
    }
    psf_workspace_free(&ws);
    psf_model_free(&m);
    printf("kernels %.6g %d %d\n", worst, checked, same);
    return fail || !same;
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--kernels")) return check_kernels();
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
