/* helium.c — the smallest complete use of psiformer.h: train a Psiformer on the helium atom with VMC and print
 * its energy beside the exact value. A few seconds on 2 cores (it prints how long it took).  Build: make build/helium; run: build/helium */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"

static int fail(void) { printf("error: %s\n", psf_last_error()); return 1; }

int main(void) {
    const double t0 = psf_time();
    psf_system he;                               /* one nucleus (Z = 2) at the origin, 1 up + 1 down electron */
    if (psf_system_atom(&he, "He", -1) != PSF_OK) return fail();

    psf_config net;                              /* a small Psiformer: 1 attention layer, 2 heads of width 8 */
    psf_config_default(&net);
    net.psiformer.n_layers = 1; net.psiformer.n_heads = 2; net.psiformer.head_dim = 8; net.psiformer.mlp_hidden = 16;
    net.n_dets = 1;
    psf_model model;
    if (psf_model_init(&model, &he, &net, 42) != PSF_OK) return fail();

    psf_vmc_config cfg;                          /* 128 walkers, KFAC (the default optimizer) */
    psf_vmc_config_default(&cfg);
    cfg.batch = 128; cfg.mcmc_steps = 5;
    psf_vmc vmc;
    if (psf_vmc_init(&vmc, &model, &cfg) != PSF_OK) return fail();

    psf_step_stats st;
    for (int step = 0; step < 500; step++) {     /* training: energy gradient + KFAC */
        if (psf_vmc_train_step(&vmc, &st) != PSF_OK) return fail();
        if (step % 100 == 0) printf("step %3d  E = %.5f Ha  variance %.4f  pmove %.2f\n", step, st.energy, st.variance, st.pmove);
    }

    enum { EVAL = 400 };                         /* evaluation: parameters frozen, energies reblocked */
    static double e[EVAL];
    for (int s = 0; s < EVAL; s++) {
        if (psf_vmc_eval_step(&vmc, &st) != PSF_OK) return fail();
        e[s] = st.energy;
    }
    double mean, err;
    if (psf_reblock(e, EVAL, &mean, &err, NULL) != PSF_OK) return fail();
    const psf_atom_info *he_info = psf_atom_lookup("He");
    printf("E = %.5f +/- %.5f Ha  (exact %.6f, error %.1f mHa) in %.1f s\n", mean, err, he_info->exact,
           1e3 * (mean - he_info->exact), psf_time() - t0);

    psf_vmc_free(&vmc);
    psf_model_free(&model);
    return 0;
}
