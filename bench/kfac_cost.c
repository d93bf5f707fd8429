/* kfac_cost — what a KFAC iteration costs beside the jet pass, and how that grows with the network width.
 *
 * For carbon at batch 256 and model widths 32, 64, 128 (4 heads x 8, 16, 32; MLP = width) it times, per
 * iteration: the jet pass over all walkers (local energies), the backward pass for the Adam gradient, the backward
 * pass with KFAC statistics (per-walker gradients + Kronecker factors), and the KFAC update (reduction, damping,
 * Cholesky solves, step). Prints seconds and ratios to the jet pass; asserts nothing.
 *   make bench/kfac_cost   or   build/kfac_cost [reps] */
#define PSIFORMER_IMPLEMENTATION
#define PSF_INTERNAL_TESTS
#include "../psiformer.h"
#include <stdlib.h>

static double time_config(int head_dim, int reps, double out[4], size_t *params) {
    psf_system sys;
    psf_system_atom(&sys, "C", -1);
    psf_config net;
    psf_config_default(&net);
    net.psiformer.head_dim = head_dim;
    net.psiformer.mlp_hidden = 4 * head_dim;
    psf_vmc_config c;
    psf_vmc_config_default(&c);
    c.burn_in = 20;
    psf_model ma, mk;
    psf_model_init(&ma, &sys, &net, 1);
    psf_model_init(&mk, &sys, &net, 1);
    *params = ma.n_params;
    psf_vmc va, vk;
    c.optimizer = PSF_OPT_ADAM;
    psf_vmc_init(&va, &ma, &c);
    c.optimizer = PSF_OPT_KFAC;
    psf_vmc_init(&vk, &mk, &c);
    psf_step_stats st;
    for (int i = 0; i < 4; i++) out[i] = 0;
    for (int r = 0; r < reps; r++) {
        psf_test_sample_and_measure(&va, &st);
        out[0] += st.t_jet;
        double t0 = psf_time();
        psf_test_energy_gradient(&va, st.energy);
        out[1] += psf_time() - t0;
        psf_test_sample_and_measure(&vk, &st);
        t0 = psf_time();
        psf_test_energy_gradient(&vk, st.energy);
        double t1 = psf_time();
        double eta;
        psf_test_optimizer_update(&vk, c.batch, &eta);
        out[2] += t1 - t0;
        out[3] += psf_time() - t1;
        psf_walkers_refresh(&vk.walkers, &vk.wf, vk.wsp, vk.n_ws);
    }
    for (int i = 0; i < 4; i++) out[i] /= reps;
    psf_vmc_free(&va); psf_vmc_free(&vk);
    psf_model_free(&ma); psf_model_free(&mk);
    return out[0];
}

int main(int argc, char **argv) {
    const int reps = argc > 1 ? atoi(argv[1]) : 5;
    printf("carbon, batch 256, %d threads, %d iterations each (seconds per iteration)\n", psf_test_max_threads(), reps);
    printf("%6s %8s %10s %12s %14s %12s %10s %10s\n", "width", "params", "jet", "bwd (adam)", "bwd+stats", "kfac update",
           "stats/jet", "update/jet");
    const int hd[3] = {8, 16, 32};
    for (int i = 0; i < 3; i++) {
        double t[4];
        size_t P;
        time_config(hd[i], reps, t, &P);
        printf("%6d %8zu %10.4f %12.4f %14.4f %12.4f %10.2f %10.2f\n", 4 * hd[i], P, t[0], t[1], t[2], t[3],
               (t[2] - t[1]) / t[0], t[3] / t[0]);
    }
    return 0;
}
