/* psiformer — train a Psiformer on a first-row atom by variational Monte Carlo and report its energy.
 *
 *   build/psiformer --atom C --out runs/carbon
 *   build/psiformer --help
 *
 * The program is four steps, each a function below: parse the options, train (Metropolis sampling, local energies,
 * gradient, optimizer update; a checkpoint every few steps), evaluate with the parameters frozen (reblocked error
 * bar), and write summary.json.
 *
 * Outputs in --out DIR: train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin (restart with --restore). */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    const char *atom, *out, *restore;
    const char *orbitals_from; /* --orbitals-from: a Molden file (NULL: none) */
    int atom_given;            /* --atom was on the command line               */
    int scale_moves;
    int spin, steps, eval_steps, checkpoint_every, print_every, pretrain_steps, gap_every;
    double train_minutes, pretrain_lr, damping, norm_constraint; /* damping / constraint: 0 = the optimizer's */
    double anneal, anneal_to, average; /* fractions of the training budget; the anneal's final step scale */
    double exact; /* the exact energy of the system (NAN if unknown), for the sub-variational warning */
    psf_config net;
    psf_vmc_config vmc;
} options;

/* What training and evaluation measured, for the summary. */
typedef struct {
    long first, done;              /* training steps: restored from, reached     */
    long averaged;                 /* steps in the parameter average (0: none)   */
    psf_real *average;             /* [n_params] their running mean               */
    double seconds[4];             /* sampling, jet, backward, optimizer         */
    double train_seconds, eval_seconds, pretrain_seconds;
    double energy, error, variance; /* evaluated (hartree), reblocked error bar  */
    int block;
} results;

static void usage(FILE *f) {
    fprintf(f,
            "usage: psiformer [options]\n"
            "Trains a Psiformer (von Glehn et al. 2023) on an atom by VMC, then evaluates its energy.\n\n"
            "system\n"
            "  --atom SYMBOL        H..Ne (default C)\n"
            "  --orbitals-from F    a Molden file (e.g. psi4's, tools/hf_orbitals.sh): its occupied orbitals are the\n"
            "                       pretraining target, and its [Atoms] and occupations the system unless --atom is\n"
            "                       given (default: an atom and its built-in Hartree-Fock orbitals)\n"
            "  --spin S             n_up - n_down (default: ground state from the built-in table)\n"
            "network\n"
            "  --layers L           self-attention layers (default 2)\n"
            "  --heads H            attention heads (default 4)\n"
            "  --head-dim D         width per head (default 16)\n"
            "  --mlp M              MLP hidden width (default 64)\n"
            "  --orbitals HEAD      det | pfaffian: K determinants, or K Pfaffians of pair matrices (default det)\n"
            "  --dets K             determinants, or Pfaffians (default 4)\n"
            "  --pf-orbitals F      pfaffian: orbital features per electron, >= N rounded down to even (default 2N)\n"
            "  --en-cusp 0|1        add an electron-nucleus cusp term to the Jastrow (extension; default 0)\n"
            "optimisation and sampling\n"
            "  --optimizer NAME     spring | kfac | adam (default spring)\n"
            "  --pretrain-steps N   Hartree-Fock pretraining steps before VMC (default 400; 0: none); the pfaffian\n"
            "                       head fits its pair matrices to the HF pair matrix Phi J Phi^T\n"
            "  --pretrain-lr X      Adam learning rate of the pretraining (default 3e-3)\n"
            "  --steps N            training iterations (default 2200; 0: as many as --train-minutes allows)\n"
            "  --train-minutes M    stop training after M minutes of wall time (default: no limit)\n"
            "  --eval-steps N       evaluation iterations with frozen parameters (default 300)\n"
            "  --batch B            walkers (default 512)\n"
            "  --mcmc-steps M       Metropolis sweeps per iteration (default 10)\n"
            "  --lr X               learning rate at step 0 (default: spring, kfac 0.05; adam 3e-3), decays as 1/(1+t/1e4)\n"
            "  --damping X          KFAC Tikhonov damping / SPRING kernel damping (default 1e-3 for both)\n"
            "  --norm-constraint X  SPRING: bound on |step|^2 (default 1e-2); KFAC: on lr^2 <update, gradient> (1e-3)\n"
            "  --kfac-ferminet 0|1  KFAC with FermiNet's Fisher (2 E[g g^T]) and gradient scaling (default 1)\n"
            "  --spring-mu X        SPRING's decay of the previous direction (default 0.99)\n"
            "  --anneal F           over the last fraction F of the training budget (steps or minutes) the step\n"
            "                       shrinks geometrically to --anneal-to times its size (default 0.3; 0: off)\n"
            "  --anneal-to R        the step's final scale, 0 < R <= 1 (default 0.1)\n"
            "  --average F          evaluate with the parameters averaged over the last fraction F of the\n"
            "                       training budget (Polyak averaging; default 0: the last step's)\n"
            "  --scale-moves 0|1    Metropolis moves scaled by the distance to the nuclei (default 0)\n"
            "  --seed S             random seed (default 1)\n"
            "  --threads T          OpenMP threads (default: all cores)\n"
            "output\n"
            "  --out DIR            write train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin (default runs/ATOM)\n"
            "  --restore FILE       continue from a checkpoint written by an earlier run with the same network\n"
            "  --checkpoint-every N write DIR/checkpoint.bin every N steps (default 100)\n"
            "  --print-every N      one line every N steps when stdout is not a terminal (default 25)\n"
            "  --gap-every N        every N steps, the train/evaluation gap column of train_stats.csv: E_L of the\n"
            "                       walkers minus E_L after 50 more sweeps of a copy (default 100; 0: off)\n"
            "  --help               this text\n"
            "Units: bohr and hartree (Ha). Exit status: 0 success, 1 run failure, 2 bad arguments.\n");
}

/* ---- 1. Options ------------------------------------------------------------------------------------------ */

/* Every numeric flag is parsed completely (no trailing characters) and range-checked; a bad value is reported as
 * "psiformer: --FLAG: expected ..., got 'VALUE'" and the program exits with status 2. */
static int parse_int(const char *flag, const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    const long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > 100000000) {
        if (lo == 0) fprintf(stderr, "psiformer: %s: expected a non-negative integer, got '%s'\n", flag, s);
        else if (lo == 1) fprintf(stderr, "psiformer: %s: expected a positive integer, got '%s'\n", flag, s);
        else fprintf(stderr, "psiformer: %s: expected an integer >= %d, got '%s'\n", flag, lo, s);
        return 1;
    }
    *out = (int)v;
    return 0;
}

static int parse_positive(const char *flag, const char *s, double *out) {
    char *end;
    errno = 0;
    const double x = strtod(s, &end);
    if (errno || end == s || *end || !(x > 0) || !isfinite(x)) {
        fprintf(stderr, "psiformer: %s: expected a positive number, got '%s'\n", flag, s);
        return 1;
    }
    *out = x;
    return 0;
}

static int parse_fraction(const char *flag, const char *s, int zero_ok, double *out) {
    char *end;
    errno = 0;
    const double x = strtod(s, &end);
    if (errno || end == s || *end || !(x >= 0 && x <= 1) || (!zero_ok && x == 0)) {
        fprintf(stderr, "psiformer: %s: expected a number %s 1, got '%s'\n", flag, zero_ok ? "from 0 to" : "above 0, at most", s);
        return 1;
    }
    *out = x;
    return 0;
}

static int parse_flag01(const char *flag, const char *s, int *out) {
    if (strcmp(s, "0") && strcmp(s, "1")) { fprintf(stderr, "psiformer: %s: expected 0 or 1, got '%s'\n", flag, s); return 1; }
    *out = s[0] == '1';
    return 0;
}

/* Returns 0 to run, 1 for bad arguments, -1 after --help. */
static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->atom = "C";
    o->spin = -1;
    o->steps = 2200; /* with --batch 512: ~12 minutes on 2 cores for carbon (docs/results.md) */
    o->eval_steps = 300;
    o->checkpoint_every = 100;
    o->print_every = 25;
    o->gap_every = 100;
    o->pretrain_lr = 3e-3;
    o->anneal = 0.3;   /* docs/results.md: carbon at 600 steps, 14.1 / 14.1 mHa against 14.1 / 15.6 without, E_L */
    o->anneal_to = 0.1; /* variance 0.37 / 0.30 against 0.44 / 0.57 Ha^2 (seeds 1 / 2) */
    o->pretrain_steps = 400; /* docs/results.md: 30 s for carbon on 2 cores */
    psf_config_default(&o->net);
    psf_vmc_config_default(&o->vmc);
    o->vmc.batch = 512;
    o->vmc.optimizer = PSF_OPT_SPRING; /* docs/results.md: 24.0 / 21.3 mHa against KFAC's 49.4 / 41.4 at equal time */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return -1; }
        if (strncmp(a, "--", 2) != 0) { fprintf(stderr, "psiformer: unexpected argument '%s' (options start with --; see --help)\n", a); return 1; }
        if (i + 1 >= argc) { fprintf(stderr, "psiformer: %s: missing value (or unknown option; see --help)\n", a); return 1; }
        const char *v = argv[++i];
        if (v[0] == '-' && v[1] == '-') { fprintf(stderr, "psiformer: %s: missing value (got the option '%s')\n", a, v); return 1; }
        int rc = 0, iv;
        if (!strcmp(a, "--atom")) { o->atom = v; o->atom_given = 1; }
        else if (!strcmp(a, "--orbitals-from")) o->orbitals_from = v;
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
        else if (!strcmp(a, "--pf-orbitals")) rc = parse_int(a, v, 1, &o->net.pf_orbitals);
        else if (!strcmp(a, "--orbitals")) {
            if (!strcmp(v, "det")) o->net.orbitals = PSF_ORBITALS_DET;
            else if (!strcmp(v, "pfaffian")) o->net.orbitals = PSF_ORBITALS_PFAFFIAN;
            else { fprintf(stderr, "psiformer: --orbitals: expected det or pfaffian, got '%s'\n", v); return 1; }
        }
        else if (!strcmp(a, "--en-cusp")) rc = parse_flag01(a, v, &o->net.use_en_cusp);
        else if (!strcmp(a, "--checkpoint-every")) rc = parse_int(a, v, 1, &o->checkpoint_every);
        else if (!strcmp(a, "--print-every")) rc = parse_int(a, v, 1, &o->print_every);
        else if (!strcmp(a, "--out")) o->out = v;
        else if (!strcmp(a, "--restore")) o->restore = v;
        else if (!strcmp(a, "--damping")) rc = parse_positive(a, v, &o->damping);
        else if (!strcmp(a, "--norm-constraint")) rc = parse_positive(a, v, &o->norm_constraint);
        else if (!strcmp(a, "--pretrain-steps")) rc = parse_int(a, v, 0, &o->pretrain_steps);
        else if (!strcmp(a, "--pretrain-lr")) rc = parse_positive(a, v, &o->pretrain_lr);
        else if (!strcmp(a, "--gap-every")) rc = parse_int(a, v, 0, &o->gap_every);
        else if (!strcmp(a, "--kfac-ferminet")) rc = parse_flag01(a, v, &o->vmc.kfac_ferminet_scale);
        else if (!strcmp(a, "--scale-moves")) rc = parse_flag01(a, v, &o->scale_moves);
        else if (!strcmp(a, "--spring-mu")) {
            rc = parse_positive(a, v, &o->vmc.spring_mu);
            if (!rc && o->vmc.spring_mu >= 1) { fprintf(stderr, "psiformer: --spring-mu: expected a number in (0, 1), got '%s'\n", v); rc = 1; }
        }
        else if (!strcmp(a, "--anneal")) rc = parse_fraction(a, v, 1, &o->anneal);
        else if (!strcmp(a, "--anneal-to")) rc = parse_fraction(a, v, 0, &o->anneal_to);
        else if (!strcmp(a, "--average")) rc = parse_fraction(a, v, 1, &o->average);
        else if (!strcmp(a, "--train-minutes")) rc = parse_positive(a, v, &o->train_minutes);
        else if (!strcmp(a, "--lr")) rc = parse_positive(a, v, &o->vmc.lr);
        else if (!strcmp(a, "--optimizer")) {
            int k = 0;
            while (k < PSF_OPT_COUNT && strcmp(v, psf_optimizer_name(k))) k++;
            if (k == PSF_OPT_COUNT) { fprintf(stderr, "psiformer: --optimizer: expected spring, kfac or adam, got '%s'\n", v); return 1; }
            o->vmc.optimizer = (psf_optimizer)k;
        } else { fprintf(stderr, "psiformer: unknown option '%s' (see --help)\n", a); return 1; }
        if (rc) return 1;
    }
    if (o->orbitals_from && !o->atom_given && o->spin >= 0) {
        fprintf(stderr, "psiformer: --spin: the spins of a system read with --orbitals-from are its Molden file's "
                        "occupations (give --atom to train an atom on these orbitals)\n");
        return 1;
    }
    /* --damping and --norm-constraint belong to the chosen optimizer */
    if (o->steps == 0 && !(o->train_minutes > 0)) {
        fprintf(stderr, "psiformer: --steps 0 trains until a wall-time budget: give --train-minutes too\n");
        return 1;
    }
    if (o->damping > 0) { o->vmc.kfac_damping = o->damping; o->vmc.spring_damping = o->damping; }
    if (o->norm_constraint > 0) { o->vmc.kfac_norm_constraint = o->norm_constraint; o->vmc.spring_norm_constraint = o->norm_constraint; }
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

static void fmt_time(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e7) snprintf(buf, n, "--:--");
    else if (s >= 3600) snprintf(buf, n, "%dh%02dm", (int)(s / 3600), (int)(fmod(s, 3600) / 60));
    else snprintf(buf, n, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

/* ---- 2. Training ------------------------------------------------------------------------------------------ */

/* After --restore from a checkpoint of `step` completed steps, train_stats.csv keeps its header and the rows of
 * steps 0..step-1 only: rows written after that checkpoint (a run killed between checkpoints) would otherwise be
 * duplicated when training resumes. The file is rewritten through a temporary and a rename. Returns 0 or -1. */
static int trim_train_csv(const char *path, long step) {
    FILE *in = fopen(path, "r");
    if (!in) return errno == ENOENT ? 0 : -1;
    char tmp[1100], line[512];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *out = fopen(tmp, "w");
    if (!out) { fclose(in); return -1; }
    int first = 1, ok = 1;
    while (fgets(line, sizeof line, in)) {
        char *end;
        const long k = strtol(line, &end, 10);
        const int data = end != line && *end == ',';
        if ((first && !data) || (data && k < step && strchr(line, '\n'))) ok = ok && fputs(line, out) != EOF;
        first = 0;
    }
    fclose(in);
    if (fclose(out) != 0 || !ok || rename(tmp, path) != 0) { remove(tmp); return -1; }
    return 0;
}

/* How far training is through its budget, 0..1: the larger of the step fraction (--steps) and the wall-time
 * fraction (--train-minutes) when step s begins, t seconds after training began. */
static double progress(const options *o, long s, double t) {
    double p = 0;
    if (o->steps > 0) p = (double)s / o->steps;
    if (o->train_minutes > 0 && t / (60.0 * o->train_minutes) > p) p = t / (60.0 * o->train_minutes);
    return p < 1 ? p : 1;
}

/* The anneal: step scale 1 until the last fraction F of the budget, then falling geometrically to R at its end. */
static double anneal_scale(const options *o, double p) {
    if (!(o->anneal > 0) || p <= 1 - o->anneal) return 1.0;
    return pow(o->anneal_to, (p - (1 - o->anneal)) / o->anneal);
}

/* Trains from v->step to o->steps (or the wall-time budget), one CSV row per step, a checkpoint every
 * checkpoint_every steps and at the end. With --anneal, sets v->step_scale before each step; with --average,
 * keeps the running mean of the parameters after each step in the last fraction of the budget (r->average).
 * Returns 0, or 1 if a step failed (the last good state is on disk). */
static int train(psf_vmc *v, const options *o, const char *outdir, results *r) {
    char path[1024];
    snprintf(path, sizeof path, "%s/train_stats.csv", outdir);
    if (o->restore && trim_train_csv(path, v->step)) {
        fprintf(stderr, "psiformer: cannot trim %s to the restored step %ld: %s\n", path, v->step, strerror(errno));
        return 1;
    }
    FILE *csv = fopen(path, o->restore ? "a" : "w");
    if (!csv) { fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno)); return 1; }
    fseek(csv, 0, SEEK_END);
    if (ftell(csv) == 0) fprintf(csv, "step,energy,variance,pmove,seconds,step_size,grad_norm,gap,walkers_reset,skipped\n");
    const int tty = isatty(fileno(stdout));
    const double t_train = psf_time();
    psf_step_stats st;
    int rc = 0;
    double ema = NAN, avg100 = 0;
    int warned = 0;
    r->first = r->done = v->step;
    const long last = o->steps > 0 ? o->steps : LONG_MAX; /* --steps 0: until the --train-minutes budget */
    char total[32];
    if (o->steps > 0) snprintf(total, sizeof total, "/%d", o->steps); else snprintf(total, sizeof total, " (%.0f min)", o->train_minutes);
    for (long s = r->first; s < last; s++) {
        if (o->train_minutes > 0 && psf_time() - t_train > 60.0 * o->train_minutes) {
            printf("%sstopping training at step %ld: --train-minutes %g reached\n", tty ? "\n" : "", s, o->train_minutes);
            break;
        }
        const double p = progress(o, s, psf_time() - t_train);
        v->step_scale = anneal_scale(o, p);
        if ((rc = psf_vmc_train_step(v, &st))) break;
        if (st.restored)
            fprintf(stderr, "%spsiformer: step %ld: non-finite parameters restored to the last accepted update's\n",
                    tty ? "\n" : "", s);
        if (st.skipped) /* the library kept the parameters and optimizer state; training goes on */
            fprintf(stderr, "%spsiformer: %s\n", tty ? "\n" : "", psf_last_error());
        r->done = s + 1;
        if (o->average > 0 && p >= 1 - o->average) {
            const size_t P = v->model->n_params;
            if (!r->average && !(r->average = (psf_real *)calloc(P, sizeof(psf_real)))) {
                fprintf(stderr, "psiformer: out of memory for --average\n");
                rc = 1;
                break;
            }
            r->averaged++;
            for (size_t i = 0; i < P; i++) r->average[i] += (v->model->params[i] - r->average[i]) / (double)r->averaged;
        }
        r->seconds[0] += st.t_sample; r->seconds[1] += st.t_jet; r->seconds[2] += st.t_backward; r->seconds[3] += st.t_optimizer;
        double gap = NAN, e_w, e_d;
        if (o->gap_every > 0 && (s + 1) % o->gap_every == 0 && psf_vmc_gap(v, 50, &e_w, &e_d) == PSF_OK) gap = e_w - e_d;
        fprintf(csv, "%ld,%.10f,%.8f,%.4f,%.3f,%.6g,%.6g,", st.step, st.energy, st.variance, st.pmove,
                psf_time() - t_train, st.step_size, st.grad_norm);
        if (isfinite(gap)) fprintf(csv, "%.6f", gap);
        fprintf(csv, ",%d,%d\n", st.n_reset, st.skipped);
        ema = isnan(ema) ? st.energy : 0.95 * ema + 0.05 * st.energy;
        avg100 += st.energy / 100;
        if ((s + 1 - r->first) % 100 == 0) { /* a 100-step mean below the exact energy: the walkers are being fitted */
            if (!warned && avg100 < o->exact)
                fprintf(stderr, "%spsiformer: warning: steps %ld-%ld: mean training energy %.4f Ha is below the exact %.4f Ha; "
                                "the optimizer is fitting its own walkers (see the gap column; a smaller --norm-constraint "
                                "or --lr helps)\n", tty ? "\n" : "", s - 98, s + 1, avg100, o->exact), warned = 1;
            avg100 = 0;
        }
        const double per = (psf_time() - t_train) / (double)(s - r->first + 1);
        double eta = o->steps > 0 ? per * (double)(o->steps - s - 1) : 1e30;
        if (o->train_minutes > 0 && eta > 60.0 * o->train_minutes - (psf_time() - t_train))
            eta = 60.0 * o->train_minutes - (psf_time() - t_train);
        eta += per * 0.5 * o->eval_steps;
        char etas[32];
        fmt_time(eta, etas, sizeof etas);
        if (tty)
            printf("\rstep %5ld%s  E %12.6f Ha  (avg %12.6f)  var %9.4f  pmove %.2f  %.2fs/step  ETA %s   ",
                   s + 1, total, st.energy, ema, st.variance, st.pmove, per, etas);
        else if ((s + 1) % o->print_every == 0 || s + 1 == last)
            printf("step %5ld%s  E %12.6f Ha  avg %12.6f  var %9.4f  pmove %.2f  %.2fs/step  ETA %s\n", s + 1, total,
                   st.energy, ema, st.variance, st.pmove, per, etas);
        fflush(stdout);
        if ((s + 1) % o->checkpoint_every == 0) {
            fflush(csv);
            snprintf(path, sizeof path, "%s/checkpoint.bin", outdir);
            if (psf_vmc_save(v, path)) fprintf(stderr, "\npsiformer: warning: %s\n", psf_last_error());
        }
    }
    if (tty) printf("\n");
    fclose(csv);
    snprintf(path, sizeof path, "%s/checkpoint.bin", outdir);
    if (psf_vmc_save(v, path)) fprintf(stderr, "psiformer: warning: %s\n", psf_last_error());
    r->train_seconds = psf_time() - t_train;
    if (rc) {
        fprintf(stderr, "psiformer: training stopped: %s (checkpoint of the last good state in %s)\n", psf_last_error(), path);
        return 1;
    }
    return 0;
}

/* ---- 2a. Hartree–Fock pretraining (before the first VMC step of a new run) ------------------------------ */

/* The target: the occupied orbitals of the Molden file mol (--orbitals-from) or, when mol is NULL, the built-in
 * Hartree-Fock orbitals of the atom. */
static int pretrain(psf_vmc *v, const options *o, const char *outdir, const psf_system *sys, const psf_molden *mol,
                    results *r) {
    psf_reference ref;
    double e_hf = NAN;
    if (mol ? psf_reference_molden(&ref, mol) : psf_reference_hf_atom(&ref, sys, &e_hf)) {
        fprintf(stderr, "psiformer: %s: %s\n", mol ? "--orbitals-from" : "--pretrain-steps", psf_last_error());
        return 1;
    }
    double *loss = (double *)malloc(sizeof(double) * (size_t)o->pretrain_steps);
    if (!loss) { fprintf(stderr, "psiformer: out of memory\n"); return 1; }
    const double t0 = psf_time();
    const char *target = v->model->cfg.orbitals == PSF_ORBITALS_PFAFFIAN ? "pair matrix" : "orbitals";
    if (mol)
        printf("pretraining: %d steps of Adam (lr %.3g) toward the %s of %s (%d up, %d down occupied)\n",
               o->pretrain_steps, o->pretrain_lr, target, o->orbitals_from, ref.n_up, ref.n_down);
    else
        printf("pretraining: %d steps of Adam (lr %.3g) toward the Hartree-Fock %s (E_HF = %.6f Ha)\n", o->pretrain_steps,
               o->pretrain_lr, target, e_hf);
    fflush(stdout);
    const int rc = psf_vmc_pretrain(v, &ref, o->pretrain_steps, o->pretrain_lr, loss);
    r->pretrain_seconds = psf_time() - t0;
    if (rc) { fprintf(stderr, "psiformer: pretraining failed: %s\n", psf_last_error()); free(loss); return 1; }
    char path[1024];
    snprintf(path, sizeof path, "%s/pretrain_stats.csv", outdir);
    FILE *f = fopen(path, "w");
    if (f) {
        fprintf(f, "step,loss\n");
        for (int s = 0; s < o->pretrain_steps; s++) fprintf(f, "%d,%.8g\n", s, loss[s]);
        fclose(f);
    }
    printf("pretraining: loss %.4g -> %.4g in %.0f s\n", loss[0], loss[o->pretrain_steps - 1], r->pretrain_seconds);
    free(loss);
    return 0;
}

/* ---- 3. Evaluation ---------------------------------------------------------------------------------------- */

/* --average: the parameters to evaluate become the running mean of the last r->averaged steps' (the checkpoint
 * keeps the last step's, to continue training from); they are written to DIR/params_evaluated.npy, and the
 * walkers are re-equilibrated to them by burn_in Metropolis sweeps. Returns 0 or 1. */
static int use_average(psf_vmc *v, const options *o, const char *outdir, results *r) {
    char path[1024];
    const size_t P = v->model->n_params;
    memcpy(v->model->params, r->average, sizeof(psf_real) * P);
    snprintf(path, sizeof path, "%s/params_evaluated.npy", outdir);
    if (sizeof(psf_real) == sizeof(double) && psf_save_npy(path, (const double *)r->average, (int)P, 1))
        fprintf(stderr, "psiformer: warning: %s\n", psf_last_error());
    if (psf_walkers_refresh(&v->walkers, &v->wf, v->wsp, v->n_ws) ||
        psf_mcmc(&v->walkers, &v->wf, v->wsp, v->n_ws, v->cfg.burn_in) < 0) {
        fprintf(stderr, "psiformer: --average: %s\n", psf_last_error());
        return 1;
    }
    printf("evaluating the parameters averaged over the last %ld training steps (--average %g), after %d sweeps\n",
           r->averaged, o->average, v->cfg.burn_in);
    return 0;
}

/* eval_steps iterations with frozen parameters; the mean energy with its reblocked error bar. Returns 0 or 1. */
static int evaluate(psf_vmc *v, const options *o, const char *outdir, results *r) {
    char path[1024];
    const int n = o->eval_steps, tty = isatty(fileno(stdout));
    double *series = (double *)malloc(sizeof(double) * (size_t)(n > 0 ? n : 1)), var_sum = 0;
    if (!series) { fprintf(stderr, "psiformer: out of memory\n"); return 1; }
    const double t_eval = psf_time();
    snprintf(path, sizeof path, "%s/eval_stats.csv", outdir);
    FILE *csv = fopen(path, "w");
    if (csv) fprintf(csv, "step,energy,variance,pmove\n");
    psf_step_stats st;
    for (int s = 0; s < n; s++) {
        if (psf_vmc_eval_step(v, &st)) {
            fprintf(stderr, "psiformer: evaluation failed: %s\n", psf_last_error());
            free(series);
            if (csv) fclose(csv);
            return 1;
        }
        series[s] = st.energy;
        var_sum += st.variance;
        if (csv) fprintf(csv, "%d,%.10f,%.8f,%.4f\n", s, st.energy, st.variance, st.pmove);
        if (tty) { printf("\reval %4d/%d  E %12.6f Ha  pmove %.2f   ", s + 1, n, st.energy, st.pmove); fflush(stdout); }
    }
    if (csv) fclose(csv);
    if (tty) printf("\n");
    r->energy = r->error = NAN;
    r->block = 0;
    if (n >= 2) psf_reblock(series, n, &r->energy, &r->error, &r->block);
    if (r->block < 0)
        fprintf(stderr, "psiformer: warning: no reblocking plateau in %d evaluation steps; the error bar (the largest "
                        "blocking estimate) is unreliable: evaluate longer (--eval-steps)\n", n);
    else if (n == 1) r->energy = series[0];
    r->variance = n > 0 ? var_sum / n : NAN;
    r->eval_seconds = psf_time() - t_eval;
    free(series);
    return 0;
}

/* ---- 4. The summary: a small JSON writer (numbers that are not finite are written as null) ---------------- */

typedef struct { FILE *f; int n; } json;
static void json_key(json *j, const char *key) { fprintf(j->f, "%s\n  \"%s\": ", j->n++ ? "," : "{", key); }
static void json_num(json *j, const char *key, double x) {
    json_key(j, key);
    if (isfinite(x)) fprintf(j->f, "%.8f", x); else fprintf(j->f, "null");
}
static void json_fmt(json *j, const char *key, const char *fmt, ...) {
    va_list ap;
    json_key(j, key);
    va_start(ap, fmt);
    vfprintf(j->f, fmt, ap);
    va_end(ap);
}
static void json_str(json *j, const char *key, const char *s) { json_fmt(j, key, "\"%s\"", s); }
static void json_int(json *j, const char *key, long x) { json_fmt(j, key, "%ld", x); }
static int json_end(json *j) { fprintf(j->f, "\n}\n"); return fclose(j->f); }

static void write_summary(const char *path, const options *o, const char *name, const psf_model *m, const psf_vmc *v,
                          const psf_atom_info *info, int ground, const results *r, double wall) {
    json j = {fopen(path, "w"), 0};
    if (!j.f) { fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno)); return; }
    const double error_mha = (r->energy - info->exact) * 1e3;
    const double corr = (info->hf_limit - r->energy) / (info->hf_limit - info->exact);
    const psf_psiformer_config *pc = &m->cfg.psiformer;
    json_str(&j, "system", name);
    if (o->orbitals_from) json_str(&j, "orbitals_from", o->orbitals_from);
    json_int(&j, "n_up", m->sys.n_up);
    json_int(&j, "n_down", m->sys.n_down);
    json_num(&j, "energy", r->energy);
    json_num(&j, "energy_error", r->error);
    json_num(&j, "variance", r->variance);
    if (isfinite(info->exact)) json_fmt(&j, "exact", "%.6f", info->exact); else json_num(&j, "exact", NAN);
    if (isfinite(info->hf_limit)) json_fmt(&j, "hf_limit", "%.6f", info->hf_limit); else json_num(&j, "hf_limit", NAN);
    json_num(&j, "error_mha", ground ? error_mha : NAN);
    json_num(&j, "correlation_fraction", ground && info->hf_limit != info->exact ? corr : NAN);
    json_str(&j, "units", "hartree");
    json_int(&j, "train_steps", r->done);
    json_fmt(&j, "anneal", "%g", o->anneal);
    json_fmt(&j, "anneal_to", "%g", o->anneal_to);
    json_int(&j, "averaged_steps", r->averaged);
    json_int(&j, "pretrain_steps", o->restore ? 0 : o->pretrain_steps);
    json_fmt(&j, "pretrain_seconds", "%.2f", r->pretrain_seconds);
    json_fmt(&j, "train_minutes_budget", "%g", o->train_minutes);
    json_int(&j, "kfac_ferminet_scale", o->vmc.kfac_ferminet_scale);
    json_int(&j, "scale_moves", o->scale_moves);
    json_int(&j, "eval_steps", o->eval_steps);
    json_int(&j, "batch", o->vmc.batch);
    json_int(&j, "mcmc_steps", o->vmc.mcmc_steps);
    json_str(&j, "optimizer", psf_optimizer_name(o->vmc.optimizer));
    json_fmt(&j, "lr", "%g", v->cfg.lr);
    json_int(&j, "params", (long)m->n_params);
    json_int(&j, "layers", pc->n_layers);
    json_int(&j, "heads", pc->n_heads);
    json_int(&j, "head_dim", pc->head_dim);
    json_int(&j, "mlp", pc->mlp_hidden);
    json_str(&j, "orbitals", m->cfg.orbitals == PSF_ORBITALS_PFAFFIAN ? "pfaffian" : "det");
    json_int(&j, "dets", m->cfg.n_dets);
    if (m->cfg.orbitals == PSF_ORBITALS_PFAFFIAN) json_int(&j, "pf_orbitals", m->cfg.pf_orbitals ? m->cfg.pf_orbitals : 2 * m->n_elec);
    json_int(&j, "en_cusp", m->cfg.use_en_cusp);
    json_fmt(&j, "seed", "%llu", (unsigned long long)o->vmc.seed);
    json_int(&j, "threads", v->n_ws);
    json_int(&j, "reblock_size", r->block < 0 ? -r->block : r->block);
    json_fmt(&j, "error_bar_reliable", "%s", r->block > 0 ? "true" : "false");
    json_fmt(&j, "wall_seconds", "%.2f", wall);
    json_fmt(&j, "seconds_sampling", "%.2f", r->seconds[0]);
    json_fmt(&j, "seconds_jet", "%.2f", r->seconds[1]);
    json_fmt(&j, "seconds_backward", "%.2f", r->seconds[2]);
    json_fmt(&j, "seconds_optimizer", "%.2f", r->seconds[3]);
    if (json_end(&j)) fprintf(stderr, "psiformer: cannot write %s\n", path);
}

/* ---- The program -------------------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    options o;
    const int pa = parse_args(argc, argv, &o);
    if (pa) return pa < 0 ? 0 : 2;
    psf_system sys;
    /* --orbitals-from without --atom: a molecule (or atom) defined by the Molden file, named after it */
    psf_molden mol;
    memset(&mol, 0, sizeof mol);
    if (o.orbitals_from && psf_molden_load(&mol, o.orbitals_from)) { fprintf(stderr, "psiformer: --orbitals-from: %s\n", psf_last_error()); return 2; }
    const int molecule = o.orbitals_from && !o.atom_given;
    char name[128];
    psf_atom_info mol_info = {name, 0, 0, 0, "", NAN, NAN};
    const psf_atom_info *info = &mol_info;
    if (molecule) {
        const char *b = strrchr(o.orbitals_from, '/') ? strrchr(o.orbitals_from, '/') + 1 : o.orbitals_from;
        snprintf(name, sizeof name, "%s", b);
        if (strrchr(name, '.') && strrchr(name, '.') != name) *strrchr(name, '.') = 0;
        if (psf_molden_system(&mol, &sys)) { fprintf(stderr, "psiformer: --orbitals-from: %s\n", psf_last_error()); return 2; }
        mol_info.n_up = sys.n_up;
        mol_info.n_down = sys.n_down;
    } else {
        snprintf(name, sizeof name, "%s", o.atom);
        if (psf_system_atom(&sys, o.atom, o.spin)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
        info = psf_atom_lookup(o.atom);
    }
    const int ground = !molecule && (o.spin < 0 || o.spin == info->n_up - info->n_down);
    o.exact = ground ? info->exact : NAN;
    char outdir[512], path[1024];
    if (o.out) snprintf(outdir, sizeof outdir, "%s", o.out); else snprintf(outdir, sizeof outdir, "runs/%s", name);
    if (mkdir_p(outdir)) { fprintf(stderr, "psiformer: cannot create output directory %s: %s\n", outdir, strerror(errno)); return 1; }
    snprintf(path, sizeof path, "%s/.psiformer_write_test", outdir); /* before any training, not after it */
    FILE *probe = fopen(path, "w");
    if (!probe || fclose(probe) != 0) { fprintf(stderr, "psiformer: --out: cannot write into %s: %s\n", outdir, strerror(errno)); return 1; }
    remove(path);

    psf_model m;
    if (psf_model_init(&m, &sys, &o.net, o.vmc.seed)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
    const double t_start = psf_time();
    psf_vmc v;
    if (psf_vmc_init(&v, &m, &o.vmc)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    v.walkers.scale_moves = o.scale_moves;
    if (o.restore && psf_vmc_load(&v, o.restore)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    const psf_psiformer_config *pc = &o.net.psiformer;
    if (molecule)
        printf("psiformer.h: %s (%d atoms, %d up, %d down, nuclear repulsion %.6f Ha) from %s\n", name, sys.n_atoms,
               sys.n_up, sys.n_down, psf_nuclear_repulsion(&sys), o.orbitals_from);
    else
        printf("psiformer.h: %s (Z = %d, %d up, %d down), exact %.6f Ha%s\n", o.atom, info->Z, sys.n_up, sys.n_down,
               info->exact, ground ? "" : " (ground state; this run uses another spin)");
    char head[64];
    if (o.net.orbitals == PSF_ORBITALS_PFAFFIAN)
        snprintf(head, sizeof head, "%d Pfaffians of %d orbital features%s", o.net.n_dets,
                 o.net.pf_orbitals ? o.net.pf_orbitals : 2 * m.n_elec, m.n_elec & 1 ? " (bordered: odd N)" : "");
    else snprintf(head, sizeof head, "%d determinants", o.net.n_dets);
    printf("network: %d layers, %d heads x %d, mlp %d, %s%s, %zu parameters\n", pc->n_layers, pc->n_heads,
           pc->head_dim, pc->mlp_hidden, head, o.net.use_en_cusp ? ", e-n cusp Jastrow" : "", m.n_params);
    char budget[96];
    if (o.steps > 0 && o.train_minutes > 0) snprintf(budget, sizeof budget, "%d train steps (at most %.1f min)", o.steps, o.train_minutes);
    else if (o.steps > 0) snprintf(budget, sizeof budget, "%d train steps", o.steps);
    else snprintf(budget, sizeof budget, "%.1f min of training", o.train_minutes);
    printf("vmc: %s lr %.3g, batch %d, %d mcmc steps/iter, %s + %d eval steps, seed %llu, %d threads%s%s\n",
           psf_optimizer_name(o.vmc.optimizer), v.cfg.lr, o.vmc.batch, o.vmc.mcmc_steps, budget, o.eval_steps,
           (unsigned long long)o.vmc.seed, v.n_ws, o.restore ? ", restored from " : "", o.restore ? o.restore : "");
    fflush(stdout);

    results r;
    memset(&r, 0, sizeof r);
    if (o.pretrain_steps > 0 && !o.restore && pretrain(&v, &o, outdir, &sys, o.orbitals_from ? &mol : NULL, &r)) return 1;
    if (train(&v, &o, outdir, &r)) return 1;
    if (r.averaged > 0 && use_average(&v, &o, outdir, &r)) return 1;
    if (evaluate(&v, &o, outdir, &r)) return 1;
    free(r.average);
    const double wall = psf_time() - t_start, tot = r.seconds[0] + r.seconds[1] + r.seconds[2] + r.seconds[3];
    if (tot > 0)
        printf("time per training step: %.3f s = sampling %.0f%% + local energy (jet) %.0f%% + gradient (backward) %.0f%% + optimizer %.0f%%\n",
               tot / (r.done - r.first > 0 ? r.done - r.first : 1), 100 * r.seconds[0] / tot, 100 * r.seconds[1] / tot,
               100 * r.seconds[2] / tot, 100 * r.seconds[3] / tot);
    printf("training %.0f s, evaluation %.0f s (%d steps x %d walkers, reblocked with block %d%s), wall %.0f s\n",
           r.train_seconds, r.eval_seconds, o.eval_steps, o.vmc.batch, r.block < 0 ? -r.block : r.block,
           r.block < 0 ? ", no plateau: error bar unreliable" : "", wall);
    snprintf(path, sizeof path, "%s/summary.json", outdir);
    write_summary(path, &o, name, &m, &v, info, ground, &r, wall);
    printf("outputs in %s/ (train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin)\n", outdir);
    if (molecule)
        printf("E = %.6f +/- %.6f Ha  (%s; no reference energy is known for it here)\n", r.energy, r.error, name);
    else if (ground)
        printf("E = %.6f +/- %.6f Ha  (exact %.6f, error %.1f mHa, %.1f%% of correlation energy)\n", r.energy, r.error,
               info->exact, (r.energy - info->exact) * 1e3, 100.0 * (info->hf_limit - r.energy) / (info->hf_limit - info->exact));
    else
        printf("E = %.6f +/- %.6f Ha  (spin %d; the exact value %.6f is for the ground state)\n", r.energy, r.error,
               sys.n_up - sys.n_down, info->exact);
    psf_vmc_free(&v);
    psf_model_free(&m);
    psf_molden_free(&mol);
    return 0;
}
