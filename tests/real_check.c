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
#include <float.h>
#include <stdio.h>
#include <stdlib.h>

static int check_kernels(void) {
    static const int shapes[][3] = {{1, 1, 1}, {7, 1, 300}, {1, 9, 5}, {6, 8, 128}, {7, 17, 129}, {13, 33, 257},
                                    {30, 64, 64}, {49, 16, 3}, {64, 40, 700}, {161, 170, 160}};
    const double eps = sizeof(psf_real) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON;
    psf_rng r;
    psf_rng_seed(&r, 13, 0);
    double worst = 0;
    int checked = 0, fail = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int t = 0; t < 4; t++)
            for (int bi = 0; bi < 3; bi++) {
                const int ta = t & 1, tb = t >> 1, M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1, ar = ta ? K : M, br = tb ? N : K;
                const double alpha = 1.25, beta = bi == 0 ? 0.0 : bi == 1 ? 1.0 : -0.5;
                psf_real *A = (psf_real *)malloc(sizeof(psf_real) * (size_t)ar * lda);
                psf_real *B = (psf_real *)malloc(sizeof(psf_real) * (size_t)br * ldb);
                psf_real *C = (psf_real *)malloc(sizeof(psf_real) * (size_t)M * ldc);
                psf_real *C0 = (psf_real *)malloc(sizeof(psf_real) * (size_t)M * ldc);
                if (!A || !B || !C || !C0) { fprintf(stderr, "real_check: out of memory\n"); exit(1); }
                for (int i = 0; i < ar * lda; i++) A[i] = (psf_real)psf_rng_normal(&r);
                for (int i = 0; i < br * ldb; i++) B[i] = (psf_real)psf_rng_normal(&r);
                for (int i = 0; i < M * ldc; i++) C[i] = C0[i] = (psf_real)(bi == 0 ? NAN : psf_rng_normal(&r));
                psf_test_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        long double s = 0, sa = 0;
                        for (int k = 0; k < K; k++) {
                            const long double p = (long double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                                                  (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                            s += p; sa += fabsl(p);
                        }
                        const double c0 = bi == 0 ? 0.0 : (double)C0[(size_t)i * ldc + j];
                        const double ref = (double)(alpha * s + beta * c0);
                        const double tol = (K + 2) * eps * (double)(fabs(alpha) * sa) + eps * fabs(beta * c0);
                        const double err = fabs((double)C[(size_t)i * ldc + j] - ref);
                        if (!(err <= tol)) fail = 1; /* also NaN: beta = 0 must not read C */
                        if (tol > 0 && err / tol > worst) worst = err / tol;
                    }
                for (int i = 0; i < M && bi != 0; i++) /* the padding beyond N in each row of C is untouched */
                    if (memcmp(&C[(size_t)i * ldc + N], &C0[(size_t)i * ldc + N], sizeof(psf_real))) fail = 1;
                checked++;
                free(A); free(B); free(C); free(C0);
            }
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
