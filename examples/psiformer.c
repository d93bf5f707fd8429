/* psiformer — train a Psiformer on a first-row atom by variational Monte Carlo and report its energy.
 *
 *   build/psiformer --atom C --out runs/carbon
 *   build/psiformer --help
 *
 * Outputs in --out DIR: train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin (restart with --restore). */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *atom, *out, *restore;
    int spin, steps, eval_steps, checkpoint_every, print_every;
    double train_minutes;
    psf_config net;
    psf_vmc_config vmc;
    int lr_given;
} options;

static void usage(FILE *f) {
    fprintf(f,
            "usage: psiformer [options]\n"
            "Trains a Psiformer (von Glehn et al. 2023) on an atom by VMC, then evaluates its energy.\n\n"
            "system\n"
            "  --atom SYMBOL        H..Ne (default C)\n"
            "  --spin S             n_up - n_down (default: ground state from the built-in table)\n"
            "network\n"
            "  --layers L           self-attention layers (default 2)\n"
            "  --heads H            attention heads (default 4)\n"
            "  --head-dim D         width per head (default 16)\n"
            "  --mlp M              MLP hidden width (default 64)\n"
            "  --dets K             determinants (default 4)\n"
            "  --en-cusp 0|1        add an electron-nucleus cusp term to the Jastrow (extension; default 0)\n"
            "optimisation and sampling\n"
            "  --optimizer NAME     kfac | adam (default kfac)\n"
            "  --steps N            training iterations (default 2200)\n"
            "  --train-minutes M    stop training after M minutes of wall time (default: no limit)\n"
            "  --eval-steps N       evaluation iterations with frozen parameters (default 300)\n"
            "  --batch B            walkers (default 512)\n"
            "  --mcmc-steps M       Metropolis sweeps per iteration (default 10)\n"
            "  --lr X               learning rate at step 0 (default: kfac 0.05, adam 3e-3), decays as 1/(1+t/1e4)\n"
            "  --damping X          KFAC Tikhonov damping (default 1e-3)\n"
            "  --norm-constraint X  KFAC bound on lr^2 <update, gradient> (default 1e-3)\n"
            "  --seed S             random seed (default 1)\n"
            "  --threads T          OpenMP threads (default: all cores)\n"
            "output\n"
            "  --out DIR            write train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin (default runs/ATOM)\n"
            "  --restore FILE       continue from a checkpoint written by an earlier run with the same network\n"
            "  --checkpoint-every N write DIR/checkpoint.bin every N steps (default 100)\n"
            "  --print-every N      one line every N steps when stdout is not a terminal (default 25)\n"
            "  --help               this text\n"
            "Units: bohr and hartree (Ha). Exit status: 0 success, 1 run failure, 2 bad arguments.\n");
}

static int parse_int(const char *flag, const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > 100000000) {
        fprintf(stderr, "psiformer: %s expects an integer >= %d, got '%s'\n", flag, lo, s);
        return 1;
    }
    *out = (int)v;
    return 0;
}

static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->atom = "C";
    o->spin = -1;
    o->steps = 2200; /* with --batch 512: ~12 minutes on 2 cores for carbon (docs/results.md) */
    o->eval_steps = 300;
    o->checkpoint_every = 100;
    o->print_every = 25;
    psf_config_default(&o->net);
    psf_vmc_config_default(&o->vmc);
    o->vmc.batch = 512;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); exit(0); }
        if (i + 1 >= argc) { fprintf(stderr, "psiformer: unknown option or missing value: %s (see --help)\n", a); return 1; }
        const char *v = argv[++i];
        int rc = 0, iv;
        if (!strcmp(a, "--atom")) o->atom = v;
        else if (!strcmp(a, "--spin")) rc = parse_int(a, v, 0, &o->spin);
        else if (!strcmp(a, "--steps")) rc = parse_int(a, v, 0, &o->steps);
        else if (!strcmp(a, "--eval-steps")) rc = parse_int(a, v, 0, &o->eval_steps);
        else if (!strcmp(a, "--batch")) rc = parse_int(a, v, 2, &o->vmc.batch);
        else if (!strcmp(a, "--mcmc-steps")) rc = parse_int(a, v, 1, &o->vmc.mcmc_steps);
        else if (!strcmp(a, "--seed")) { rc = parse_int(a, v, 0, &iv); o->vmc.seed = (uint64_t)iv; }
        else if (!strcmp(a, "--threads")) rc = parse_int(a, v, 1, &o->vmc.threads);
        else if (!strcmp(a, "--layers")) rc = parse_int(a, v, 0, &o->net.psiformer.n_layers);
        else if (!strcmp(a, "--heads")) rc = parse_int(a, v, 1, &o->net.psiformer.n_heads);
        else if (!strcmp(a, "--head-dim")) rc = parse_int(a, v, 1, &o->net.psiformer.head_dim);
        else if (!strcmp(a, "--mlp")) rc = parse_int(a, v, 1, &o->net.psiformer.mlp_hidden);
        else if (!strcmp(a, "--dets")) rc = parse_int(a, v, 1, &o->net.n_dets);
        else if (!strcmp(a, "--en-cusp")) rc = parse_int(a, v, 0, &o->net.use_en_cusp);
        else if (!strcmp(a, "--checkpoint-every")) rc = parse_int(a, v, 1, &o->checkpoint_every);
        else if (!strcmp(a, "--print-every")) rc = parse_int(a, v, 1, &o->print_every);
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--damping") || !strcmp(a, "--norm-constraint")) {
            char *end;
            const double x = strtod(v, &end);
            if (*end || !(x > 0)) { fprintf(stderr, "psiformer: %s expects a positive number, got '%s'\n", a, v); return 1; }
            if (!strcmp(a, "--damping")) o->vmc.kfac_damping = x; else o->vmc.kfac_norm_constraint = x;
        } else if (!strcmp(a, "--train-minutes")) {
            char *end;
            o->train_minutes = strtod(v, &end);
            if (*end || !(o->train_minutes > 0)) { fprintf(stderr, "psiformer: --train-minutes expects a positive number, got '%s'\n", v); return 1; }
        }
        else if (!strcmp(a, "--restore")) o->restore = v;
        else if (!strcmp(a, "--lr")) {
            char *end;
            o->vmc.lr = strtod(v, &end);
            o->lr_given = 1;
            if (*end || !(o->vmc.lr > 0)) { fprintf(stderr, "psiformer: --lr expects a positive number, got '%s'\n", v); return 1; }
        } else if (!strcmp(a, "--optimizer")) {
            if (!strcmp(v, "kfac")) o->vmc.optimizer = PSF_OPT_KFAC;
            else if (!strcmp(v, "adam")) o->vmc.optimizer = PSF_OPT_ADAM;
            else { fprintf(stderr, "psiformer: --optimizer expects kfac or adam, got '%s'\n", v); return 1; }
        } else { fprintf(stderr, "psiformer: unknown option %s (see --help)\n", a); return 1; }
        if (rc) return 1;
    }
    if (!o->lr_given) o->vmc.lr = 0; /* the optimizer's default */
    return 0;
}

static int mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') { *p = 0; if (mkdir(buf, 0755) && errno != EEXIST) return -1; *p = '/'; }
    if (mkdir(buf, 0755) && errno != EEXIST) return -1;
    return 0;
}

/* A JSON number, or null when not finite (JSON has no NaN). */
static const char *jnum(double x, char *buf, size_t n) {
    if (isfinite(x)) snprintf(buf, n, "%.8f", x); else snprintf(buf, n, "null");
    return buf;
}

static void fmt_time(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e7) snprintf(buf, n, "--:--");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(fmod(s, 3600) / 60));
    else snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

int main(int argc, char **argv) {
    options o;
    if (parse_args(argc, argv, &o)) return 2;
    psf_system sys;
    if (psf_system_atom(&sys, o.atom, o.spin)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
    const psf_atom_info *info = psf_atom_lookup(o.atom);
    const int ground = (o.spin < 0 || o.spin == info->n_up - info->n_down);
    char outdir[512], path[1024];
    if (o.out) snprintf(outdir, sizeof outdir, "%s", o.out); else snprintf(outdir, sizeof outdir, "runs/%s", o.atom);
    if (mkdir_p(outdir)) { fprintf(stderr, "psiformer: cannot create output directory %s: %s\n", outdir, strerror(errno)); return 1; }

    psf_model m;
    if (psf_model_init(&m, &sys, &o.net, o.vmc.seed)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
    const double t_start = psf_time();
    psf_vmc v;
    if (psf_vmc_init(&v, &m, &o.vmc)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    if (o.restore && psf_vmc_load(&v, o.restore)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    const int tty = isatty(fileno(stdout));
    const char *opt_name = o.vmc.optimizer == PSF_OPT_KFAC ? "kfac" : "adam";
    printf("psiformer.h: %s (Z = %d, %d up, %d down), exact %.6f Ha%s\n", o.atom, info->Z, sys.n_up, sys.n_down,
           info->exact, ground ? "" : " (ground state; this run uses another spin)");
    printf("network: %d layers, %d heads x %d, mlp %d, %d determinants%s, %zu parameters\n", o.net.psiformer.n_layers,
           o.net.psiformer.n_heads, o.net.psiformer.head_dim, o.net.psiformer.mlp_hidden, o.net.n_dets, o.net.use_en_cusp ? ", e-n cusp Jastrow" : "",
           m.n_params);
    printf("vmc: %s lr %.3g, batch %d, %d mcmc steps/iter, %d train + %d eval steps, seed %llu, %d threads%s%s\n",
           opt_name, v.cfg.lr, o.vmc.batch, o.vmc.mcmc_steps, o.steps, o.eval_steps, (unsigned long long)o.vmc.seed,
           v.n_ws, o.restore ? ", restored from " : "", o.restore ? o.restore : "");
    fflush(stdout);

    snprintf(path, sizeof path, "%s/train_stats.csv", outdir);
    FILE *csv = fopen(path, o.restore ? "a" : "w");
    if (!csv) { fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno)); return 1; }
    if (!o.restore) fprintf(csv, "step,energy,variance,pmove,seconds,step_size,grad_norm\n");
    double tsum[4] = {0, 0, 0, 0};
    const long first = v.step;
    const double t_train = psf_time();
    psf_step_stats st;
    int rc = 0;
    double ema = NAN;
    long done = first;
    for (long s = first; s < o.steps; s++) {
        if (o.train_minutes > 0 && psf_time() - t_train > 60.0 * o.train_minutes) {
            printf("%sstopping training at step %ld: --train-minutes %.1f reached\n", tty ? "\n" : "", s, o.train_minutes);
            break;
        }
        if ((rc = psf_vmc_train_step(&v, &st))) break;
        done = s + 1;
        tsum[0] += st.t_sample; tsum[1] += st.t_jet; tsum[2] += st.t_backward; tsum[3] += st.t_optimizer;
        const double el = psf_time() - t_start;
        fprintf(csv, "%ld,%.10f,%.8f,%.4f,%.3f,%.6g,%.6g\n", st.step, st.energy, st.variance, st.pmove, el, st.step_size,
                st.grad_norm);
        ema = isnan(ema) ? st.energy : 0.95 * ema + 0.05 * st.energy;
        const double per = (psf_time() - t_train) / (double)(s - first + 1);
        double eta = per * (double)(o.steps - s - 1);
        if (o.train_minutes > 0 && eta > 60.0 * o.train_minutes - (psf_time() - t_train))
            eta = 60.0 * o.train_minutes - (psf_time() - t_train);
        eta += per * 0.5 * o.eval_steps;
        char etas[32];
        fmt_time(eta, etas, sizeof etas);
        if (tty)
            printf("\rstep %5ld/%d  E %12.6f Ha  (avg %12.6f)  var %9.4f  pmove %.2f  %.2fs/step  ETA %s   ",
                   s + 1, o.steps, st.energy, ema, st.variance, st.pmove, per, etas);
        else if ((s + 1) % o.print_every == 0 || s + 1 == o.steps)
            printf("step %5ld/%d  E %12.6f Ha  avg %12.6f  var %9.4f  pmove %.2f  %.2fs/step  ETA %s\n", s + 1, o.steps,
                   st.energy, ema, st.variance, st.pmove, per, etas);
        fflush(stdout);
        if ((s + 1) % o.checkpoint_every == 0) {
            fflush(csv);
            snprintf(path, sizeof path, "%s/checkpoint.bin", outdir);
            if (psf_vmc_save(&v, path)) fprintf(stderr, "\npsiformer: warning: %s\n", psf_last_error());
        }
    }
    if (tty) printf("\n");
    fclose(csv);
    snprintf(path, sizeof path, "%s/checkpoint.bin", outdir);
    if (psf_vmc_save(&v, path)) fprintf(stderr, "psiformer: warning: %s\n", psf_last_error());
    if (rc) { fprintf(stderr, "psiformer: training stopped: %s (checkpoint of the last good state in %s)\n", psf_last_error(), path); return 1; }
    const double train_seconds = psf_time() - t_train;

    /* evaluation with frozen parameters */
    double *series = (double *)malloc(sizeof(double) * (size_t)(o.eval_steps > 0 ? o.eval_steps : 1));
    double var_sum = 0;
    const double t_eval = psf_time();
    snprintf(path, sizeof path, "%s/eval_stats.csv", outdir);
    FILE *ecsv = fopen(path, "w");
    if (ecsv) fprintf(ecsv, "step,energy,variance,pmove\n");
    for (int s = 0; s < o.eval_steps; s++) {
        if ((rc = psf_vmc_eval_step(&v, &st))) { fprintf(stderr, "psiformer: evaluation failed: %s\n", psf_last_error()); return 1; }
        series[s] = st.energy;
        var_sum += st.variance;
        if (ecsv) fprintf(ecsv, "%d,%.10f,%.8f,%.4f\n", s, st.energy, st.variance, st.pmove);
        if (tty) { printf("\reval %4d/%d  E %12.6f Ha  pmove %.2f   ", s + 1, o.eval_steps, st.energy, st.pmove); fflush(stdout); }
    }
    if (ecsv) fclose(ecsv);
    if (tty) printf("\n");
    double energy = NAN, err = NAN;
    int block = 0;
    if (o.eval_steps >= 2) psf_reblock(series, o.eval_steps, &energy, &err, &block);
    else if (o.eval_steps == 1) energy = series[0];
    const double variance = o.eval_steps > 0 ? var_sum / o.eval_steps : NAN;
    const double wall = psf_time() - t_start;
    const double error_mha = (energy - info->exact) * 1e3;
    const double corr = (info->hf_limit - info->exact) != 0 ? 100.0 * (info->hf_limit - energy) / (info->hf_limit - info->exact) : NAN;
    const double tot = tsum[0] + tsum[1] + tsum[2] + tsum[3];
    if (tot > 0)
        printf("time per training step: %.3f s = sampling %.0f%% + local energy (jet) %.0f%% + gradient (backward) %.0f%% + optimizer %.0f%%\n",
               tot / (done - first > 0 ? done - first : 1), 100 * tsum[0] / tot, 100 * tsum[1] / tot,
               100 * tsum[2] / tot, 100 * tsum[3] / tot);
    printf("training %.0f s, evaluation %.0f s (%d steps x %d walkers, reblocked with block %d), wall %.0f s\n",
           train_seconds, psf_time() - t_eval, o.eval_steps, o.vmc.batch, block, wall);

    snprintf(path, sizeof path, "%s/summary.json", outdir);
    FILE *js = fopen(path, "w");
    if (js) {
        char b1[40], b2[40], b3[40], b4[40], b5[40];
        fprintf(js, "{\n  \"system\": \"%s\",\n  \"n_up\": %d,\n  \"n_down\": %d,\n  \"energy\": %s,\n  \"energy_error\": %s,\n"
                    "  \"variance\": %s,\n  \"exact\": %.6f,\n  \"hf_limit\": %.6f,\n  \"error_mha\": %s,\n"
                    "  \"correlation_fraction\": %s,\n  \"units\": \"hartree\",\n  \"train_steps\": %d,\n  \"eval_steps\": %d,\n"
                    "  \"batch\": %d,\n  \"mcmc_steps\": %d,\n  \"optimizer\": \"%s\",\n  \"lr\": %g,\n  \"params\": %zu,\n"
                    "  \"layers\": %d,\n  \"heads\": %d,\n  \"head_dim\": %d,\n  \"mlp\": %d,\n  \"dets\": %d,\n  \"en_cusp\": %d,\n"
                    "  \"seed\": %llu,\n  \"threads\": %d,\n  \"reblock_size\": %d,\n  \"wall_seconds\": %.2f,\n"
                    "  \"seconds_sampling\": %.2f,\n  \"seconds_jet\": %.2f,\n  \"seconds_backward\": %.2f,\n  \"seconds_optimizer\": %.2f\n}\n",
                o.atom, sys.n_up, sys.n_down, jnum(energy, b1, 40), jnum(err, b2, 40), jnum(variance, b3, 40), info->exact,
                info->hf_limit, jnum(ground ? error_mha : NAN, b4, 40), jnum(ground ? corr / 100.0 : NAN, b5, 40), (int)done,
                o.eval_steps, o.vmc.batch, o.vmc.mcmc_steps, opt_name, v.cfg.lr, m.n_params, o.net.psiformer.n_layers, o.net.psiformer.n_heads,
                o.net.psiformer.head_dim, o.net.psiformer.mlp_hidden, o.net.n_dets, o.net.use_en_cusp, (unsigned long long)o.vmc.seed, v.n_ws, block, wall, tsum[0],
                tsum[1], tsum[2], tsum[3]);
        fclose(js);
    } else fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno));
    printf("outputs in %s/ (train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin)\n", outdir);
    if (ground)
        printf("E = %.6f +/- %.6f Ha  (exact %.6f, error %.1f mHa, %.1f%% of correlation energy)\n", energy, err,
               info->exact, error_mha, corr);
    else
        printf("E = %.6f +/- %.6f Ha  (spin %d; the exact value %.6f is for the ground state)\n", energy, err,
               sys.n_up - sys.n_down, info->exact);
    free(series);
    psf_vmc_free(&v);
    psf_model_free(&m);
    return 0;
}
