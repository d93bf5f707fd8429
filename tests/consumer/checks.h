/* checks.h — what the consumer programs check, in the common subset of C99 and C++17 (main.c and main.cpp both
 * include it). Each check prints a line on failure; consumer_run returns the number that failed. */
#include <math.h>
#include <stdio.h>
#include <string.h>

static int consumer_failed = 0;
static void consumer_expect(int ok, const char *what) {
    if (!ok) {
        printf("consumer: FAILED: %s\n", what);
        consumer_failed++;
    }
}

static int consumer_run(const char *language) {
    /* 1. The analytic local energy of helium with psi = exp(-zeta (r1 + r2)):
     *    E_L = -zeta^2 + (zeta - Z)(1/r1 + 1/r2) + 1/r12, here at one fixed point. */
    psf_system he;
    consumer_expect(psf_system_atom(&he, "He", -1) == PSF_OK, "psf_system_atom(He)");
    psf_hydrogenic h;
    memset(&h, 0, sizeof h);
    h.n_elec = 2;
    h.zeta = 27.0 / 16.0;
    psf_wavefunction wf = psf_hydrogenic_wavefunction(&h);
    const psf_real x[6] = {0.3, -0.2, 0.5, -0.7, 0.1, 0.4};
    psf_real grad[6];
    psf_eloc e;
    psf_local_energy(&he, &wf, NULL, x, grad, &e);
    const double r1 = sqrt(0.3 * 0.3 + 0.2 * 0.2 + 0.5 * 0.5), r2 = sqrt(0.7 * 0.7 + 0.1 * 0.1 + 0.4 * 0.4);
    const double r12 = sqrt(1.0 * 1.0 + 0.3 * 0.3 + 0.1 * 0.1), z = h.zeta;
    const double expected = -z * z + (z - 2.0) * (1.0 / r1 + 1.0 / r2) + 1.0 / r12;
    consumer_expect(fabs(e.total - expected) < 1e-10, "helium local energy equals the closed form");
    const double e_he = e.total;

    /* 2. A small Psiformer on lithium (2 up, 1 down): swapping the two spin-up electrons flips the sign of psi
     *    and keeps |psi|; its local energy is finite. */
    psf_system li;
    consumer_expect(psf_system_atom(&li, "Li", -1) == PSF_OK, "psf_system_atom(Li)");
    psf_config cfg;
    psf_config_default(&cfg);
    cfg.psiformer.n_layers = 1;
    cfg.psiformer.n_heads = 2;
    cfg.psiformer.head_dim = 4;
    cfg.psiformer.mlp_hidden = 8;
    cfg.n_dets = 2;
    psf_model m;
    if (psf_model_init(&m, &li, &cfg, 7) != PSF_OK) {
        printf("consumer: FAILED: psf_model_init: %s\n", psf_last_error());
        return consumer_failed + 1;
    }
    psf_workspace ws;
    consumer_expect(psf_workspace_init(&ws, &m) == PSF_OK, "psf_workspace_init");
    psf_real y[9] = {0.4, 0.1, -0.3, -0.6, 0.9, 0.2, 0.1, -0.5, 0.7}, ys[9];
    memcpy(ys, y, sizeof y);
    for (int k = 0; k < 3; k++) { ys[k] = y[3 + k]; ys[3 + k] = y[k]; }
    int s1 = 0, s2 = 0;
    const double l1 = psf_model_logpsi(&m, &ws, y, &s1), l2 = psf_model_logpsi(&m, &ws, ys, &s2);
    consumer_expect(isfinite(l1) && s1 != 0, "log|psi| is finite");
    consumer_expect(fabs(l1 - l2) < 1e-10 * (1 + fabs(l1)) && s1 == -s2, "psi is antisymmetric in same-spin electrons");
    psf_wavefunction mw = psf_model_wavefunction(&m);
    psf_real g[9];
    psf_local_energy(&li, &mw, &ws, y, g, &e);
    consumer_expect(isfinite(e.total), "Psiformer local energy is finite");
    psf_workspace_free(&ws);
    psf_model_free(&m);

    /* 3. Errors are values with a message; the clock runs. */
    psf_system bad;
    consumer_expect(psf_system_atom(&bad, "Xx", -1) == PSF_ERR_ARG, "an unknown element is refused");
    consumer_expect(strstr(psf_last_error(), "Xx") != NULL, "the message names the element");
    const double t = psf_time();
    consumer_expect(t > 0 && psf_time() >= t, "psf_time is positive and does not go back");

    if (consumer_failed == 0) printf("consumer (%s): ok, E_L(He) = %.12f Ha, log|psi(Li)| = %.6f\n", language, e_he, l1);
    return consumer_failed;
}
