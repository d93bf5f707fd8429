/* bench.c — throughput of psiformer.h (issue 4, "Benchmarks"): walker evaluations per second for log|psi|, the
 * local energy (jet pass + potential) and a full training iteration, achieved GFLOP/s of the jet pass from an
 * analytic flop count, thread scaling, a per-op profile of the jet pass, and SPRING's B x B kernel in float32
 * (metric gram: GFLOP/s of B (B + 1) P flops, against bench_peak's float32 FMA loop). Numbers are printed and
 * appended to a CSV; nothing is asserted (a benchmark does not fail because it is slow). bench/run.sh drives it.
 *
 *   bench [--atoms He,Be,C,Ne] [--head-dims 16,8,32] [--batches 256,1024] [--threads 2|1,2]
 *         [--metrics logpsi,eloc,train,mcmc,gram] [--optimizer default|adam|kfac] [--budget SEC] [--max-reps R]
 *         [--layers L] [--mlp M] [--dets K] [--tag NAME] [--csv FILE]
 *   bench --ops ATOM [--head-dims 16] [--reps R] [--csv FILE]      per-op jet profile (one thread)
 *   bench --jet-loop ATOM [--head-dims 16] [--walkers N]            N jet passes, one thread (perf, callgrind)
 *   bench --flops                                                    flop counts only, no timing
 *
 * Built twice by `make bench`: with the built-in matrix loops (build/bench) and with -DPSF_USE_CBLAS -lopenblas
 * (build/bench_blas); the binary reports which one it is ("builtin" / "openblas") in every row.
 *
 * Timing: each measurement runs the whole batch once (warm-up and estimate); if that took less than --budget
 * seconds, it is repeated up to --max-reps times within the budget and the fastest repetition is reported (the
 * machine may be shared; the fastest run is the least disturbed one). The flop counts are in bench/README.md.
 */
#define PSIFORMER_IMPLEMENTATION
#include "psiformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* the build's name in every row: "openblas" or "builtin", with "-f32" for the float build (-DPSF_REAL=float,
 * build/bench_f32) */
#ifdef PSF_USE_CBLAS
#define BUILD_BASE "openblas"
#else
#define BUILD_BASE "builtin"
#endif
#define BUILD_NAME (sizeof(psf_real) == sizeof(float) ? BUILD_BASE "-f32" : BUILD_BASE)

/* ---- analytic flop counts (see bench/README.md) ------------------------------------------------------------
 * One multiply-add = 2 flops; exp / log / tanh / sqrt / division = 1 flop each. The count is that of the dense
 * algorithm the library runs (every node carries all S = D + 2 slices: value, D = 3N derivatives, Laplacian),
 * not of an algorithm that skips the zero blocks of the per-electron Jacobians. jet = 0: the forward pass. */
static double node_flops(const psf_model *m, const psf_node *nd, int jet) {
    const double N = m->n_elec, D = m->n_dim, A = m->sys.n_atoms, S = jet ? D + 2 : 1;
    const double rows = nd->rows, cols = nd->cols, n = rows * cols;
    switch (nd->op) {
    case PSF_OP_INPUT: return 0;
    case PSF_OP_FEATURES: return N * A * (jet ? 80 : 30);
    case PSF_OP_LINEAR: {
        const double a = m->nodes[nd->in0].cols, b = cols;
        return 2 * S * rows * a * b + (nd->ib ? rows * b : 0);
    }
    case PSF_OP_ADD: return S * n;
    case PSF_OP_TANH: return jet ? n * (7 + 3 * D) : n;
    case PSF_OP_LAYERNORM: return jet ? rows * cols * (2 * S + 10 * D + 13) : rows * cols * 8;
    case PSF_OP_ATTN_SCORES: /* (H T) x T; T = cols */
    case PSF_OP_ATTN_MIX: {  /* T x (H d_head); T = rows */
        const double T = nd->op == PSF_OP_ATTN_SCORES ? cols : rows, W = (double)nd->ia * nd->ib;
        return jet ? 6 * T * T * W * (D + 1) : 2 * T * T * W;
    }
    case PSF_OP_SOFTMAX: return jet ? n * (11 + 9 * D) : 4 * n;
    case PSF_OP_ENVELOPE: return (double)nd->ia * N * N * (jet ? D + 19 + 20 * A : 1 + 3 * A);
    case PSF_OP_LOGDET: {
        const double K = nd->ia, lu = 2.0 / 3.0 * N * N * N;
        return K * (lu + (jet ? 2 * N * N * N + 2 * N * N + D * (2 * N * N * N + 2 * N * N + N) : 0)) + 4 * K * D + 2 * D;
    }
    case PSF_OP_JASTROW: return N * (N - 1) / 2 * (jet ? 40 : 12);
    default: return 0;
    }
}

static double model_flops(const psf_model *m, int jet) {
    double f = 0;
    for (int k = 0; k <= m->out_node; k++) f += node_flops(m, &m->nodes[k], jet);
    return f;
}

/* potential energy and |grad|^2 of psf_local_energy */
static double potential_flops(const psf_model *m) {
    const double N = m->n_elec, A = m->sys.n_atoms;
    return 9 * N * A + 10 * N * (N - 1) / 2 + 2 * m->n_dim + 5;
}

/* ---- helpers ------------------------------------------------------------------------------------------------ */
static int split_list(const char *s, char out[][16], int max) {
    int n = 0;
    while (s && *s && n < max) {
        const char *e = strchr(s, ',');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len >= 16) len = 15;
        memcpy(out[n], s, len);
        out[n][len] = 0;
        if (len) n++;
        s = e ? e + 1 : NULL;
    }
    return n;
}

static void set_threads(int t) {
#ifdef _OPENMP
    omp_set_num_threads(t);
#else
    (void)t;
#endif
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

typedef struct {
    const psf_model *m;
    psf_workspace *ws; /* [n_threads] */
    const psf_real *x; /* [B * D]     */
    int B;
    double sink;
    psf_walkers *w;    /* run_mcmc's walkers (they move) */
    int n_ws;          /* workspaces in ws               */
    int blocks;        /* run_mcmc: 1 = psf_mcmc through psf_model_logpsi_block, 0 = one walker at a time */
    float *of;         /* run_gram: Ō, B rows of n_params floats, in the kernel's panels */
    double *gram;      /* run_gram: the B x B kernel */
} runner;

/* the library's own loops: psf_walkers_refresh uses schedule(dynamic, 4) for log|psi| and the driver
 * schedule(dynamic, 2) for the local energies */
static double run_logpsi(runner *r) {
    const int D = r->m->n_dim;
    double s = 0, t0 = psf_time();
#pragma omp parallel for schedule(dynamic, 4) reduction(+ : s)
    for (int b = 0; b < r->B; b++) {
        int sg;
        s += psf_model_logpsi(r->m, &r->ws[thread_id()], r->x + (size_t)b * D, &sg);
    }
    r->sink += s;
    return psf_time() - t0;
}

/* MCMC_SWEEPS Metropolis sweeps of the B walkers (a training iteration's sampling), with the walkers in blocks
 * through psf_model_logpsi_block or one at a time (the wavefunction without logpsi_block): the same chains bit for
 * bit, so the two rows time the same work. */
#define MCMC_SWEEPS 10
static double run_mcmc(runner *r) {
    psf_wavefunction wf = psf_model_wavefunction((psf_model *)r->m);
    if (!r->blocks) wf.logpsi_block = NULL;
    void *wsp[256];
    const int n = r->n_ws < 256 ? r->n_ws : 256;
    for (int t = 0; t < n; t++) wsp[t] = &r->ws[t];
    double t0 = psf_time();
    if (psf_mcmc(r->w, &wf, wsp, n, MCMC_SWEEPS) < 0) { fprintf(stderr, "bench: %s\n", psf_last_error()); exit(1); }
    return psf_time() - t0;
}

static double run_eloc(runner *r) {
    const int D = r->m->n_dim;
    const psf_wavefunction wf = psf_model_wavefunction((psf_model *)r->m);
    double s = 0, t0 = psf_time();
#pragma omp parallel for schedule(dynamic, 2) reduction(+ : s)
    for (int b = 0; b < r->B; b++) {
        psf_real g[3 * PSF_MAX_ELEC];
        psf_eloc el;
        psf_local_energy(&r->m->sys, &wf, &r->ws[thread_id()], r->x + (size_t)b * D, g, &el);
        s += el.total;
    }
    r->sink += s;
    return psf_time() - t0;
}

/* SPRING's kernel Ō Ō^T (B x B from B x P, P = n_params) in float32 as the optimizer computes it every iteration:
 * stripes of panel rows over the threads (psf__gram_stripes), the upper triangle only. */
static double run_gram(runner *r) {
    double t0 = psf_time();
    psf__gram_stripes(r->B, r->m->n_params, r->of, r->gram);
    const double t = psf_time() - t0;
    r->sink += r->gram[(size_t)r->B * r->B - 1];
    return t;
}

/* Ō for run_gram: B rows of P uniform numbers in (-1, 1), written into the panels as SPRING writes its own */
static float *gram_operand(int B, size_t P) {
    float *of = calloc((size_t)PSF__PANELS(B) * PSF__GNR * P, sizeof(float));
    double *row = malloc(sizeof(double) * P);
    if (!of || !row) {
        fprintf(stderr, "bench: out of memory for the Gram operand (%d x %zu floats)\n", B, P);
        exit(1);
    }
    psf_rng rng;
    psf_rng_seed(&rng, 7, 0);
    for (int b = 0; b < B; b++) {
        for (size_t k = 0; k < P; k++) row[k] = 2.0 * psf_rng_uniform(&rng) - 1.0;
        psf__panel_row(of + (size_t)(b / PSF__GNR) * PSF__GNR * P, b % PSF__GNR, row, 0, (int)P);
    }
    free(row);
    return of;
}

/* Runs fn once, then repeats within budget (at most max_reps more); returns the fastest time. */
static double timed(double (*fn)(runner *), runner *r, double budget, int max_reps, int *reps) {
    double best = fn(r);
    *reps = 1;
    const double first = best;
    int more = first > 0 ? (int)(budget / first) : max_reps;
    if (more > max_reps) more = max_reps;
    for (int i = 0; i < more; i++) {
        double t = fn(r);
        if (*reps == 1 || t < best) best = t; /* the first run was the warm-up */
        (*reps)++;
    }
    return best;
}

static FILE *open_csv(const char *path, const char *header) {
    if (!path) return NULL;
    FILE *f = fopen(path, "a+");
    if (!f) { fprintf(stderr, "bench: cannot open %s\n", path); exit(1); }
    fseek(f, 0, SEEK_END);
    if (ftell(f) == 0) fprintf(f, "%s\n", header);
    return f;
}

#define TABLE_HEADER "build,tag,threads,atom,n_elec,n_layers,n_heads,head_dim,mlp,n_dets,n_params,batch,metric," \
                     "optimizer,walkers_per_s,us_per_walker,reps,mflop_per_walker,gflops"

static void emit(FILE *csv, const char *tag, int threads, const char *atom, const psf_model *m, int batch,
                 const char *metric, const char *opt, double seconds, int walkers, int reps, double flops) {
    const double wps = walkers / seconds, us = 1e6 * seconds / walkers;
    const double gf = flops > 0 ? wps * flops * 1e-9 : 0;
    char name[40];
    snprintf(name, sizeof name, "%s%s%s%s", metric, opt[0] ? " (" : "", opt, opt[0] ? ")" : "");
    printf("  %-3s d=%-3d B=%-5d T=%d %-8s %-13s %11.1f walkers/s %10.1f us/walker", atom, m->cfg.psiformer.head_dim, batch,
           threads, BUILD_NAME, name, wps, us);
    if (flops > 0) printf(" %7.2f GFLOP/s", gf);
    printf("  (%d rep%s)\n", reps, reps > 1 ? ", best" : "");
    fflush(stdout);
    if (csv) {
        fprintf(csv, "%s,%s,%d,%s,%d,%d,%d,%d,%d,%d,%zu,%d,%s,%s,%.6g,%.6g,%d,%.6g,%.6g\n", BUILD_NAME, tag, threads,
                atom, m->n_elec, m->cfg.psiformer.n_layers, m->cfg.psiformer.n_heads, m->cfg.psiformer.head_dim, m->cfg.psiformer.mlp_hidden, m->cfg.n_dets,
                m->n_params, batch, metric, opt, wps, us, reps, flops * 1e-6, gf);
        fflush(csv);
    }
}

/* ---- the throughput table ----------------------------------------------------------------------------------- */
/* The default network with head_dim on atom (exits with the message on failure). */
/* --layers / --mlp / --dets: the network's other sizes (0: psf_config_default's); --layers 4 --head-dims 64 --mlp 256
 * --dets 16 is the Psiformer paper's network (von Glehn et al. 2023, Table 3), run.sh's "paper" row */
static int net_layers, net_mlp, net_dets;
static void bench_model(const char *atom, int head_dim, psf_system *sys, psf_config *cfg, psf_model *m) {
    psf_config_default(cfg);
    cfg->psiformer.head_dim = head_dim;
    if (net_layers > 0) cfg->psiformer.n_layers = net_layers;
    if (net_mlp > 0) cfg->psiformer.mlp_hidden = net_mlp;
    if (net_dets > 0) cfg->n_dets = net_dets;
    if (psf_system_atom(sys, atom, -1) != PSF_OK || psf_model_init(m, sys, cfg, 1) != PSF_OK) {
        fprintf(stderr, "bench: %s\n", psf_last_error());
        exit(1);
    }
}

static void bench_config(const char *atom, int head_dim, int batch, const int *threads, int n_threads,
                         const char *metrics, int optimizer, double budget, int max_reps, const char *tag, FILE *csv) {
    psf_system sys;
    psf_config cfg;
    psf_model m;
    bench_model(atom, head_dim, &sys, &cfg, &m);
    const double fl_fwd = model_flops(&m, 0), fl_eloc = model_flops(&m, 1) + potential_flops(&m);

    int tmax = 1;
    for (int i = 0; i < n_threads; i++) if (threads[i] > tmax) tmax = threads[i];
    psf_workspace *ws = calloc((size_t)tmax, sizeof *ws);
    psf_walkers w;
    if (!ws || psf_walkers_init(&w, &sys, batch, 7) != PSF_OK) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
    for (int t = 0; t < tmax; t++)
        if (psf_workspace_init(&ws[t], &m) != PSF_OK) { fprintf(stderr, "bench: %s\n", psf_last_error()); exit(1); }
    runner r = {&m, ws, w.x, batch, 0, NULL, tmax, 1, NULL, NULL};
    if (strstr(metrics, "gram")) {
        r.of = gram_operand(batch, m.n_params);
        r.gram = calloc((size_t)batch * batch, sizeof(double));
        if (!r.gram) { fprintf(stderr, "bench: out of memory\n"); exit(1); }
    }
    psf_walkers wm; /* run_mcmc's walkers, moved by it: a copy, so that the other rows keep their positions */
    if (strstr(metrics, "mcmc")) {
        const psf_wavefunction wf = psf_model_wavefunction(&m);
        void *wsp[256];
        for (int t = 0; t < tmax && t < 256; t++) wsp[t] = &ws[t];
        set_threads(tmax); /* the refresh needs a workspace per thread: as many threads as workspaces */
        if (psf_walkers_init(&wm, &sys, batch, 7) != PSF_OK || psf_walkers_refresh(&wm, &wf, wsp, tmax) != PSF_OK) {
            fprintf(stderr, "bench: %s\n", psf_last_error());
            exit(1);
        }
        r.w = &wm;
    }

    for (int ti = 0; ti < n_threads; ti++) {
        const int T = threads[ti];
        set_threads(T);
        int reps;
        if (strstr(metrics, "logpsi")) {
            double t = timed(run_logpsi, &r, budget, max_reps, &reps);
            emit(csv, tag, T, atom, &m, batch, "logpsi", "", t, batch, reps, fl_fwd);
        }
        if (strstr(metrics, "mcmc")) { /* walker moves per second: B walkers x MCMC_SWEEPS per call */
            for (int blk = 1; blk >= 0; blk--) {
                r.blocks = blk;
                double t = timed(run_mcmc, &r, budget, max_reps, &reps);
                emit(csv, tag, T, atom, &m, batch, blk ? "mcmc" : "mcmc1", "", t, batch * MCMC_SWEEPS, reps, fl_fwd);
            }
        }
        if (strstr(metrics, "eloc")) {
            double t = timed(run_eloc, &r, budget, max_reps, &reps);
            emit(csv, tag, T, atom, &m, batch, "eloc", "", t, batch, reps, fl_eloc);
        }
        if (strstr(metrics, "gram")) { /* flops per walker (one row of Ō): the upper triangle, B (B + 1) P in all */
            double t = timed(run_gram, &r, budget, max_reps, &reps);
            emit(csv, tag, T, atom, &m, batch, "gram", "", t, batch, reps, (double)(batch + 1) * (double)m.n_params);
        }
        if (strstr(metrics, "train")) {
            /* a fresh model per thread count (Adam changes the parameters); burn-in 0: the MCMC sweeps of the
             * measured iterations are timed as part of them anyway */
            psf_model mt;
            psf_vmc v;
            psf_vmc_config vc;
            psf_vmc_config_default(&vc);
            vc.batch = batch;
            vc.burn_in = 0;
            vc.threads = T;
            vc.seed = 7;
            if (optimizer >= 0) { vc.optimizer = (psf_optimizer)optimizer; vc.lr = 0; /* the optimizer's default */ }
            if (psf_model_init(&mt, &sys, &cfg, 1) != PSF_OK || psf_vmc_init(&v, &mt, &vc) != PSF_OK) {
                fprintf(stderr, "bench: %s\n", psf_last_error());
                exit(1);
            }
            psf_step_stats st, best_st;
            double best = 0;
            int n = 0, more = 0, ok = 1;
            double t0 = psf_time();
            if (psf_vmc_train_step(&v, &st) != PSF_OK) ok = 0;
            const double first = psf_time() - t0;
            best = first; best_st = st; n = 1;
            more = first > 0 ? (int)(budget / first) : max_reps;
            if (more > max_reps) more = max_reps;
            for (int i = 0; i < more && ok; i++) {
                t0 = psf_time();
                if (psf_vmc_train_step(&v, &st) != PSF_OK) { ok = 0; break; }
                const double t = psf_time() - t0;
                if (n == 1 || t < best) { best = t; best_st = st; }
                n++;
            }
            if (!ok) printf("  %-3s d=%-3d B=%-5d T=%d train step failed: %s\n", atom, head_dim, batch, T, psf_last_error());
            /* one iteration: mcmc_steps forward passes per walker, the jet pass, a forward + backward pass, Adam,
             * and the refresh (one forward pass) */
            emit(csv, tag, T, atom, &m, batch, "train", psf_optimizer_name(vc.optimizer), best, batch, n, 0);
            const double parts[4] = {best_st.t_sample, best_st.t_jet, best_st.t_backward, best_st.t_optimizer};
            const char *names[4] = {"train.sample", "train.eloc", "train.backward", "train.optimizer"};
            printf("  %-3s d=%-3d B=%-5d T=%d    iteration %.3f s = sample %.3f + E_L %.3f + gradient %.3f + %s & refresh %.3f\n",
                   atom, head_dim, batch, T, best, parts[0], parts[1], parts[2], psf_optimizer_name(vc.optimizer), parts[3]);
            if (csv)
                for (int p = 0; p < 4; p++)
                    fprintf(csv, "%s,%s,%d,%s,%d,%d,%d,%d,%d,%d,%zu,%d,%s,%s,,%.6g,%d,,\n", BUILD_NAME, tag, T, atom,
                            m.n_elec, cfg.psiformer.n_layers, cfg.psiformer.n_heads, head_dim, cfg.psiformer.mlp_hidden, cfg.n_dets, m.n_params,
                            batch, names[p], psf_optimizer_name(vc.optimizer), 1e6 * parts[p] / batch, n);
            psf_vmc_free(&v);
            psf_model_free(&mt);
        }
    }
    if (r.sink == 12345.678) printf(" "); /* keep the results alive */
    for (int t = 0; t < tmax; t++) psf_workspace_free(&ws[t]);
    free(ws);
    psf_walkers_free(&w);
    if (r.w) psf_walkers_free(r.w);
    free(r.of);
    free(r.gram);
    psf_model_free(&m);
}

/* ---- per-op profile of the jet pass --------------------------------------------------------------------------
 * Node k's time is t(run nodes 0..k) - t(run nodes 0..k-1), each the fastest of `reps` runs over `nw` walkers,
 * one thread (psf_model_eval_node runs the graph up to a node). */
static void bench_ops(const char *atom, int head_dim, int reps, FILE *csv) {
    psf_system sys;
    psf_config cfg;
    psf_model m;
    psf_workspace ws;
    psf_walkers w;
    const int nw = 8;
    bench_model(atom, head_dim, &sys, &cfg, &m);
    if (psf_workspace_init(&ws, &m) != PSF_OK || psf_walkers_init(&w, &sys, nw, 7) != PSF_OK) {
        fprintf(stderr, "bench: %s\n", psf_last_error());
        exit(1);
    }
    set_threads(1);
    const int n = m.out_node + 1, D = m.n_dim;
    double *cum = calloc((size_t)n + 1, sizeof *cum);
    for (int k = 0; k < n; k++) cum[k + 1] = INFINITY;
    for (int rep = 0; rep < reps; rep++) /* prefixes interleaved, so that a disturbance spreads over all of them */
        for (int k = 0; k < n; k++) {
            double t0 = psf_time();
            for (int b = 0; b < nw; b++) psf_model_eval_node(&m, &ws, w.x + (size_t)b * D, k, 1);
            const double t = (psf_time() - t0) / nw;
            if (t < cum[k + 1]) cum[k + 1] = t;
        }
    double by_op_t[PSF_OP_COUNT] = {0}, by_op_f[PSF_OP_COUNT] = {0}, tot_t = cum[n], tot_f = 0;
    int by_op_n[PSF_OP_COUNT] = {0};
    printf("per-op profile of the jet pass: %s, default network with head_dim %d, %s matrix products, 1 thread\n",
           atom, head_dim, BUILD_NAME);
    printf("  (node time = t(nodes 0..k) - t(nodes 0..k-1), fastest of %d runs over %d walkers; small ops are noisy)\n",
           reps, nw);
    printf("  %-4s %-12s %-14s %10s %10s %9s\n", "node", "op", "shape", "us", "MFLOP", "GFLOP/s");
    for (int k = 0; k < n; k++) {
        const psf_node *nd = &m.nodes[k];
        const double t = cum[k + 1] - cum[k], f = node_flops(&m, nd, 1);
        by_op_t[nd->op] += t; by_op_f[nd->op] += f; by_op_n[nd->op]++;
        tot_f += f;
        char shape[32];
        snprintf(shape, sizeof shape, "%dx%d", nd->rows, nd->cols);
        printf("  %-4d %-12s %-14s %10.1f %10.3f %9.2f\n", k, psf_op_name(nd->op), shape, 1e6 * t, 1e-6 * f,
               t > 0 ? 1e-9 * f / t : 0.0);
        if (csv)
            fprintf(csv, "%s,%s,%d,node,%d,%s,%dx%d,%.6g,%.6g\n", BUILD_NAME, atom, head_dim, k, psf_op_name(nd->op),
                    nd->rows, nd->cols, 1e6 * t, 1e-6 * f);
    }
    printf("  by op type:\n  %-12s %5s %10s %7s %10s %7s %9s\n", "op", "nodes", "us", "%time", "MFLOP", "%flop",
           "GFLOP/s");
    for (int o = 0; o < PSF_OP_COUNT; o++) {
        if (!by_op_n[o]) continue;
        printf("  %-12s %5d %10.1f %6.1f%% %10.3f %6.1f%% %9.2f\n", psf_op_name(o), by_op_n[o], 1e6 * by_op_t[o],
               100 * by_op_t[o] / tot_t, 1e-6 * by_op_f[o], 100 * by_op_f[o] / tot_f,
               by_op_t[o] > 0 ? 1e-9 * by_op_f[o] / by_op_t[o] : 0.0);
        if (csv)
            fprintf(csv, "%s,%s,%d,op,%d,%s,,%.6g,%.6g\n", BUILD_NAME, atom, head_dim, by_op_n[o], psf_op_name(o),
                    1e6 * by_op_t[o], 1e-6 * by_op_f[o]);
    }
    printf("  %-12s %5d %10.1f %6.1f%% %10.3f %6.1f%% %9.2f\n", "total", n, 1e6 * tot_t, 100.0, 1e-6 * tot_f, 100.0,
           1e-9 * tot_f / tot_t);
    if (csv) fprintf(csv, "%s,%s,%d,total,%d,total,,%.6g,%.6g\n", BUILD_NAME, atom, head_dim, n, 1e6 * tot_t, 1e-6 * tot_f);
    free(cum);
    psf_walkers_free(&w);
    psf_workspace_free(&ws);
    psf_model_free(&m);
}

/* ---- a plain loop of jet passes, one thread: a target for perf record / valgrind --tool=callgrind ------------- */
static void jet_loop(const char *atom, int head_dim, int n) {
    psf_system sys;
    psf_config cfg;
    psf_model m;
    psf_workspace ws;
    psf_walkers w;
    if (psf_system_atom(&sys, atom, -1) != PSF_OK) { fprintf(stderr, "bench: %s\n", psf_last_error()); exit(1); }
    psf_config_default(&cfg);
    cfg.psiformer.head_dim = head_dim;
    if (psf_model_init(&m, &sys, &cfg, 1) != PSF_OK || psf_workspace_init(&ws, &m) != PSF_OK ||
        psf_walkers_init(&w, &sys, n, 7) != PSF_OK) {
        fprintf(stderr, "bench: %s\n", psf_last_error());
        exit(1);
    }
    psf_real g[3 * PSF_MAX_ELEC], lap = 0;
    double s = 0, t0 = psf_time();
    for (int b = 0; b < n; b++) {
        int sg;
        s += psf_model_jet(&m, &ws, w.x + (size_t)b * m.n_dim, g, &lap, &sg) + lap;
    }
    const double t = psf_time() - t0, fl = model_flops(&m, 1);
    printf("jet loop: %s d=%d, %d passes, %s: %.1f us/pass, %.2f GFLOP/s (checksum %.6g)\n", atom, head_dim, n,
           BUILD_NAME, 1e6 * t / n, 1e-9 * fl * n / t, s);
    psf_walkers_free(&w);
    psf_workspace_free(&ws);
    psf_model_free(&m);
}

static void print_flops(void) {
    const char *atoms[] = {"He", "Li", "Be", "B", "C", "N", "O", "F", "Ne"};
    const int hds[] = {8, 16, 32};
    printf("analytic flop counts per walker (MFLOP): forward pass, jet pass, local energy (jet + potential)\n");
    for (int h = 0; h < 3; h++)
        for (int a = 0; a < 9; a++) {
            psf_system sys;
            psf_config cfg;
            psf_model m;
            psf_system_atom(&sys, atoms[a], -1);
            psf_config_default(&cfg);
            cfg.psiformer.head_dim = hds[h];
            if (psf_model_init(&m, &sys, &cfg, 1) != PSF_OK) continue;
            printf("  %-3s N=%-2d d=%-3d params %7zu  forward %8.3f  jet %9.3f  eloc %9.3f\n", atoms[a], m.n_elec,
                   hds[h], m.n_params, 1e-6 * model_flops(&m, 0), 1e-6 * model_flops(&m, 1),
                   1e-6 * (model_flops(&m, 1) + potential_flops(&m)));
            psf_model_free(&m);
        }
}

static void usage(void) {
    fprintf(stderr,
            "usage: bench [--atoms He,Be,C,Ne] [--head-dims 16,8,32] [--batches 256,1024] [--threads 2|1,2]\n"
            "             [--metrics logpsi,eloc,train,mcmc,gram] [--optimizer default|adam|kfac] [--budget SEC]\n"
            "             [--max-reps R]\n"
            "             [--layers L] [--mlp M] [--dets K] [--tag NAME] [--csv FILE]\n"
            "       bench --ops ATOM [--head-dims 16] [--reps R] [--csv FILE]\n"
            "       bench --jet-loop ATOM [--head-dims 16] [--walkers N]   (for perf / callgrind)\n"
            "       bench --flops\n");
}

int main(int argc, char **argv) {
    const char *atoms = "He,Be,C,Ne", *hds = "16,8,32", *batches = "256,1024", *threads_s = NULL;
    const char *metrics = "logpsi,eloc,train", *tag = "table", *csv_path = NULL, *ops_atom = NULL, *loop_atom = NULL;
    double budget = 1.0;
    int max_reps = 5, reps = 20, flops_only = 0, optimizer = -1, loop_walkers = 100;
    for (int a = 1; a < argc; a++) {
        const char *k = argv[a];
        if (!strcmp(k, "--flops")) { flops_only = 1; continue; }
        if (a + 1 >= argc) { usage(); return 2; }
        const char *v = argv[++a];
        if (!strcmp(k, "--atoms")) atoms = v;
        else if (!strcmp(k, "--head-dims")) hds = v;
        else if (!strcmp(k, "--batches")) batches = v;
        else if (!strcmp(k, "--threads")) threads_s = v;
        else if (!strcmp(k, "--metrics")) metrics = v;
        else if (!strcmp(k, "--budget")) budget = atof(v);
        else if (!strcmp(k, "--max-reps")) max_reps = atoi(v);
        else if (!strcmp(k, "--reps")) reps = atoi(v);
        else if (!strcmp(k, "--tag")) tag = v;
        else if (!strcmp(k, "--csv")) csv_path = v;
        else if (!strcmp(k, "--ops")) ops_atom = v;
        else if (!strcmp(k, "--jet-loop")) loop_atom = v;
        else if (!strcmp(k, "--walkers")) loop_walkers = atoi(v);
        else if (!strcmp(k, "--layers")) net_layers = atoi(v);
        else if (!strcmp(k, "--mlp")) net_mlp = atoi(v);
        else if (!strcmp(k, "--dets")) net_dets = atoi(v);
        else if (!strcmp(k, "--optimizer")) optimizer = !strcmp(v, "adam") ? PSF_OPT_ADAM : !strcmp(v, "kfac") ? PSF_OPT_KFAC : -1;
        else { fprintf(stderr, "bench: unknown option %s\n", k); usage(); return 2; }
    }
    if (flops_only) { print_flops(); return 0; }
    char al[16][16], hl[16][16], bl[16][16], tl[16][16];
    const int na = split_list(atoms, al, 16), nh = split_list(hds, hl, 16), nb = split_list(batches, bl, 16);
    if (loop_atom) {
        set_threads(1);
        jet_loop(loop_atom, nh ? atoi(hl[0]) : 16, loop_walkers > 0 ? loop_walkers : 1);
        return 0;
    }
    if (ops_atom) {
        FILE *csv = open_csv(csv_path, "build,atom,head_dim,kind,node,op,shape,us_per_walker,mflop_per_walker");
        bench_ops(ops_atom, nh ? atoi(hl[0]) : 16, reps > 0 ? reps : 1, csv);
        if (csv) fclose(csv);
        return 0;
    }
    int threads[16], nt = 0;
    if (threads_s) {
        const int n = split_list(threads_s, tl, 16);
        for (int i = 0; i < n; i++) threads[nt++] = atoi(tl[i]) > 0 ? atoi(tl[i]) : max_threads();
    } else threads[nt++] = max_threads();
#ifndef _OPENMP
    for (int i = 0; i < nt; i++) threads[i] = 1;
#endif
    FILE *csv = open_csv(csv_path, TABLE_HEADER);
    for (int a = 0; a < na; a++)
        for (int h = 0; h < nh; h++)
            for (int b = 0; b < nb; b++)
                bench_config(al[a], atoi(hl[h]), atoi(bl[b]), threads, nt, metrics, optimizer, budget, max_reps, tag,
                             csv);
    if (csv) fclose(csv);
    return 0;
}
