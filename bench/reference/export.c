/* export.c — writes a random (untrained) Psiformer, walker positions and the C library's results as .npy files,
 * for the independent PyTorch cross-check in bench/reference/psiformer_ref.py.
 *
 *   export --atom C --layers 2 --heads 2 --head-dim 4 --mlp 8 --dets 2 --seed 1 --walkers 8 --out DIR
 *          [--layernorm 0|1] [--jastrow 0|1] [--perturb SCALE] [--orbitals det|pfaffian] [--pf-orbitals F]
 *
 * --orbitals pfaffian selects the neural-Pfaffian head (K = --dets Pfaffians of pair matrices of F = --pf-orbitals
 * orbital features per electron; 0, the default, is the library's default F = 2N).
 *
 * Writes into DIR (which must exist):
 *   <block>.npy     every parameter block of m.pblocks, rows x cols (1-D when cols = 1)
 *   config.json     atom, Z, n_up, n_down, nucleus position, network shape, block names/shapes in order
 *   x.npy           W x 3N walker positions (bohr), each coordinate N(0,1) around the nucleus
 *   c_logpsi.npy    W       log|psi| from the jet pass (psf_model_jet)
 *   c_logpsi_fwd.npy W      log|psi| from the forward pass (psf_model_logpsi)
 *   c_sign.npy      W       sign(psi)
 *   c_grad.npy      W x 3N  grad log|psi|
 *   c_lap.npy       W       Laplacian of log|psi|
 *   c_eloc.npy      W       local energy (psf_local_energy with psf_model_wavefunction)
 *
 * The initialisation is symmetric in several blocks (LayerNorm scale 1 / offset 0, envelope pi = sigma = 1,
 * Jastrow alpha = 1); those are perturbed here (scale --perturb, default 0.1) so the cross-check exercises them:
 *   LN scale  *= 1 + s N(0,1),  LN offset += s N(0,1),  pi, sigma *= 1 + s N(0,1),  alpha *= 1 + s N(0,1).
 */
#define PSIFORMER_IMPLEMENTATION
#include "psiformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(const char *prog) {
    fprintf(stderr,
            "usage: %s --atom SYM --layers L --heads H --head-dim d --mlp M --dets K --seed S --walkers W --out DIR\n"
            "          [--layernorm 0|1] [--jastrow 0|1] [--perturb SCALE] [--orbitals det|pfaffian] [--pf-orbitals F]\n",
            prog);
}

static int save(const char *dir, const char *name, const double *data, int rows, int cols) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int rc = psf_save_npy(path, data, rows, cols);
    if (rc != PSF_OK) fprintf(stderr, "export: %s\n", psf_last_error());
    return rc;
}

int main(int argc, char **argv) {
    const char *atom = NULL, *out = NULL;
    psf_config cfg;
    psf_config_default(&cfg);
    long long seed = 1;
    int walkers = 8;
    double perturb = 0.1;
    for (int a = 1; a < argc; a++) {
        const char *k = argv[a];
        if (a + 1 >= argc) { usage(argv[0]); return 2; }
        const char *v = argv[++a];
        if (!strcmp(k, "--atom")) atom = v;
        else if (!strcmp(k, "--out")) out = v;
        else if (!strcmp(k, "--layers")) cfg.psiformer.n_layers = atoi(v);
        else if (!strcmp(k, "--heads")) cfg.psiformer.n_heads = atoi(v);
        else if (!strcmp(k, "--head-dim")) cfg.psiformer.head_dim = atoi(v);
        else if (!strcmp(k, "--mlp")) cfg.psiformer.mlp_hidden = atoi(v);
        else if (!strcmp(k, "--dets")) cfg.n_dets = atoi(v);
        else if (!strcmp(k, "--layernorm")) cfg.psiformer.use_layernorm = atoi(v);
        else if (!strcmp(k, "--jastrow")) cfg.use_jastrow = atoi(v);
        else if (!strcmp(k, "--seed")) seed = atoll(v);
        else if (!strcmp(k, "--walkers")) walkers = atoi(v);
        else if (!strcmp(k, "--perturb")) perturb = atof(v);
        else if (!strcmp(k, "--pf-orbitals")) cfg.pf_orbitals = atoi(v);
        else if (!strcmp(k, "--orbitals")) {
            if (!strcmp(v, "det")) cfg.orbitals = PSF_ORBITALS_DET;
            else if (!strcmp(v, "pfaffian")) cfg.orbitals = PSF_ORBITALS_PFAFFIAN;
            else { fprintf(stderr, "export: --orbitals: expected det or pfaffian, got '%s'\n", v); return 2; }
        }
        else { fprintf(stderr, "export: unknown option %s\n", k); usage(argv[0]); return 2; }
    }
    if (!atom || !out || walkers < 1) { usage(argv[0]); return 2; }

    psf_system sys;
    if (psf_system_atom(&sys, atom, -1) != PSF_OK) { fprintf(stderr, "export: %s\n", psf_last_error()); return 1; }
    psf_model m;
    if (psf_model_init(&m, &sys, &cfg, (uint64_t)seed) != PSF_OK) {
        fprintf(stderr, "export: %s\n", psf_last_error());
        return 1;
    }
    const int N = m.n_elec, D = m.n_dim;

    /* move the symmetric blocks away from their initial values */
    psf_rng prng;
    psf_rng_seed(&prng, (uint64_t)seed, 0xBE27AB);
    for (int b = 0; b < m.n_pblocks; b++) {
        const psf_pblock *pb = &m.pblocks[b];
        psf_real *p = m.params + pb->off;
        for (int i = 0; i < pb->rows * pb->cols; i++) {
            switch (pb->kind) {
            case PSF_PB_LN_SCALE:
            case PSF_PB_ENV_PI:
            case PSF_PB_ENV_SIGMA:
            case PSF_PB_JASTROW: p[i] *= 1 + perturb * psf_rng_normal(&prng); break;
            case PSF_PB_LN_OFFSET: p[i] += perturb * psf_rng_normal(&prng); break;
            default: break;
            }
        }
    }

    int rc = 0;
    for (int b = 0; b < m.n_pblocks && !rc; b++) {
        const psf_pblock *pb = &m.pblocks[b];
        rc = save(out, pb->name, m.params + pb->off, pb->rows, pb->cols);
    }

    /* config.json */
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", out);
    FILE *f = fopen(path, "w");
    if (!f) { fprintf(stderr, "export: cannot write %s\n", path); return 1; }
    fprintf(f, "{\n  \"atom\": \"%s\",\n  \"Z\": %.17g,\n  \"R\": [%.17g, %.17g, %.17g],\n", atom, sys.Z[0], sys.R[0][0],
            sys.R[0][1], sys.R[0][2]);
    fprintf(f, "  \"n_up\": %d,\n  \"n_down\": %d,\n", sys.n_up, sys.n_down);
    fprintf(f, "  \"layers\": %d,\n  \"heads\": %d,\n  \"head_dim\": %d,\n  \"mlp\": %d,\n  \"dets\": %d,\n", cfg.psiformer.n_layers,
            cfg.psiformer.n_heads, cfg.psiformer.head_dim, cfg.psiformer.mlp_hidden, cfg.n_dets);
    fprintf(f, "  \"layernorm\": %d,\n  \"jastrow\": %d,\n  \"seed\": %lld,\n  \"walkers\": %d,\n", cfg.psiformer.use_layernorm,
            cfg.use_jastrow, seed, walkers);
    /* the head, and for the Pfaffian head the number F of orbital features actually used (0 means 2N) */
    const int pf = cfg.orbitals == PSF_ORBITALS_PFAFFIAN;
    fprintf(f, "  \"orbitals\": \"%s\",\n  \"pf_orbitals\": %d,\n", pf ? "pfaffian" : "det",
            pf ? (cfg.pf_orbitals ? cfg.pf_orbitals : 2 * N) : 0);
    fprintf(f, "  \"blocks\": [");
    for (int b = 0; b < m.n_pblocks; b++)
        fprintf(f, "%s\n    {\"name\": \"%s\", \"rows\": %d, \"cols\": %d}", b ? "," : "", m.pblocks[b].name,
                m.pblocks[b].rows, m.pblocks[b].cols);
    fprintf(f, "\n  ]\n}\n");
    if (fclose(f) != 0) { fprintf(stderr, "export: write failed: %s\n", path); return 1; }

    /* walkers and the C results */
    double *x = calloc((size_t)walkers * D, sizeof *x), *grad = calloc((size_t)walkers * D, sizeof *grad);
    double *logpsi = calloc(walkers, sizeof *logpsi), *logpsi_fwd = calloc(walkers, sizeof *logpsi_fwd);
    double *sign = calloc(walkers, sizeof *sign), *lap = calloc(walkers, sizeof *lap);
    double *eloc = calloc(walkers, sizeof *eloc), *g2 = calloc(D, sizeof *g2);
    psf_workspace ws;
    if (!x || !grad || !logpsi || !logpsi_fwd || !sign || !lap || !eloc || !g2 || psf_workspace_init(&ws, &m) != PSF_OK) {
        fprintf(stderr, "export: out of memory\n");
        return 1;
    }
    psf_wavefunction wf = psf_model_wavefunction(&m);
    for (int w = 0; w < walkers; w++) {
        psf_rng r;
        psf_rng_seed(&r, (uint64_t)seed, 0x3A1C0000ULL + (uint64_t)w);
        double *xw = x + (size_t)w * D;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 3; k++) xw[3 * i + k] = sys.R[0][k] + psf_rng_normal(&r);
        int s = 0, s2 = 0;
        psf_real lp = 0;
        logpsi[w] = psf_model_jet(&m, &ws, xw, grad + (size_t)w * D, &lp, &s);
        lap[w] = lp;
        sign[w] = s;
        logpsi_fwd[w] = psf_model_logpsi(&m, &ws, xw, &s2);
        if (s2 != s) fprintf(stderr, "export: walker %d: forward sign %d != jet sign %d\n", w, s2, s);
        psf_eloc el;
        psf_local_energy(&m.sys, &wf, &ws, xw, g2, &el);
        eloc[w] = el.total;
    }
    if (!rc) rc = save(out, "x", x, walkers, D);
    if (!rc) rc = save(out, "c_logpsi", logpsi, walkers, 1);
    if (!rc) rc = save(out, "c_logpsi_fwd", logpsi_fwd, walkers, 1);
    if (!rc) rc = save(out, "c_sign", sign, walkers, 1);
    if (!rc) rc = save(out, "c_grad", grad, walkers, D);
    if (!rc) rc = save(out, "c_lap", lap, walkers, 1);
    if (!rc) rc = save(out, "c_eloc", eloc, walkers, 1);

    psf_workspace_free(&ws);
    free(x); free(grad); free(logpsi); free(logpsi_fwd); free(sign); free(lap); free(eloc); free(g2);
    psf_model_free(&m);
    if (rc) return 1;
    printf("export: %s N=%d (%d up) %s L=%d H=%d d=%d M=%d K=%d ln=%d jas=%d, %zu params, %d walkers -> %s\n", atom, N,
           sys.n_up, cfg.orbitals == PSF_ORBITALS_PFAFFIAN ? "pfaffian" : "det", cfg.psiformer.n_layers, cfg.psiformer.n_heads, cfg.psiformer.head_dim, cfg.psiformer.mlp_hidden, cfg.n_dets, cfg.psiformer.use_layernorm,
           cfg.use_jastrow, m.n_params, walkers, out);
    return 0;
}
