/* psiformer — train a Psiformer on a first-row atom or a small molecule by variational Monte Carlo and report its
 * energy.
 *
 *   build/psiformer --atom C --out runs/carbon
 *   build/psiformer --xyz data/xyz/lih.xyz --out runs/lih
 *   build/psiformer --help
 *
 * The program is four steps, each a function below: parse the options, train (Metropolis sampling, local energies,
 * gradient, optimizer update; a checkpoint every few steps), evaluate with the parameters frozen (reblocked error
 * bar), and write summary.json.
 *
 * Outputs in --out DIR: train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin (restart with --restore),
 * plot.gp and, when gnuplot is installed, training.png (the training curve). */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef PSF_USE_MPI
#include <mpi.h>
#endif

/* MPI (make MPI=1): the ranks share the walkers and hold the same state after every step (psiformer.h, PSF_USE_MPI);
 * only rank 0 prints and writes files. Without MPI this is rank 0 of 1. */
static int g_rank = 0;
#ifdef PSF_USE_MPI
static MPI_Comm g_comm;
#endif
/* fopen for the outputs; on the other ranks the null device. */
static FILE *out_open(const char *path, const char *mode) { return g_rank == 0 ? fopen(path, mode) : fopen("/dev/null", "w"); }

typedef struct {
    const char *atom, *out, *restore, *xyz;
    const char *orbitals_from; /* --orbitals-from: a Molden file (NULL: none) */
    int scale_moves, units_bohr, charge, atom_given, units_given, charge_given;
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
            "Trains a Psiformer (von Glehn et al. 2023) on an atom or molecule by VMC, then evaluates its energy.\n\n"
            "system\n"
            "  --atom SYMBOL        H..Ne (default C)\n"
            "  --xyz FILE           a molecule instead: XYZ file (atom count, comment, then 'Symbol x y z' lines)\n"
            "  --units U            the XYZ file's units: angstrom or bohr (default angstrom)\n"
            "  --charge Q           --xyz: net charge; electrons = sum of nuclear charges - Q (default 0)\n"
            "  --spin S             n_up - n_down (default: an atom's ground state from the built-in table; for\n"
            "                       --xyz the lowest, 0 or 1; with --orbitals-from alone, the file's occupations)\n"
            "  --orbitals-from F    a Molden file (e.g. psi4's, tools/hf_orbitals.sh): its occupied orbitals are the\n"
            "                       pretraining target, and its [Atoms] and occupations the system unless --atom is\n"
            "                       given (default: an atom and its built-in Hartree-Fock orbitals)\n"
                        "network\n"
            "  --layers L           self-attention layers (default 2)\n"
            "  --heads H            attention heads (default 4)\n"
            "  --head-dim D         width per head (default 16)\n"
            "  --mlp M              MLP hidden width (default 64)\n"
            "  --orbitals HEAD      det | pfaffian: K determinants, or K Pfaffians of pair matrices (default det)\n"
            "  --dets K             determinants, or Pfaffians (default 4)\n"
            "  --pair FORM          pfaffian: bilinear | mlp | bilinear+mlp: Phi = M (W - W^T) M^T, or\n"
            "                       Phi_ij = nu(h_i, h_j) - nu(h_j, h_i) with nu a two-layer MLP, times envelopes, or\n"
            "                       their sum with the MLP term starting at 0 (default bilinear)\n"
            "  --pf-orbitals F      pfaffian, bilinear forms: orbital features per electron, >= N rounded down to\n"
            "                       even (default 2N)\n"
            "  --pf-hidden C        pfaffian, mlp forms: hidden width of nu (default 32)\n"
            "  --en-cusp 0|1        add an electron-nucleus cusp term to the Jastrow (extension; default 0)\n"
            "optimisation and sampling\n"
            "  --optimizer NAME     spring | kfac | adam (default spring)\n"
            "  --pretrain-steps N   Hartree-Fock pretraining steps before VMC (default 400; 2000 for an atom of\n"
            "                       >= 10 electrons, i.e. Ne; 0: none); the pfaffian\n"
            "                       head fits its orbital features, with W - W^T = J, so that its pair\n"
            "                       matrices become the HF pair matrix Phi J Phi^T\n"
            "  --pretrain-lr X      Adam learning rate of the pretraining (default 3e-3)\n"
            "  --steps N            training iterations (default 2200; 0: as many as --train-minutes allows)\n"
            "  --train-minutes M    stop training after M minutes of wall time (default: no limit)\n"
            "  --eval-steps N       evaluation iterations with frozen parameters (default 300)\n"
            "  --batch B            walkers (default 512; refused if the run would not fit in physical memory)\n"
            "  --mcmc-steps M       Metropolis sweeps per iteration (default 10)\n"
            "  --lr X               learning rate at step 0 (default: spring, kfac 0.05; adam 3e-3), decays as 1/(1+t/1e4)\n"
            "  --damping X          KFAC Tikhonov damping / SPRING kernel damping (default 1e-3 for both)\n"
            "  --norm-constraint X  SPRING: bound on |step|^2 (default 1e-2); KFAC: on lr^2 <update, gradient> (1e-3)\n"
            "  --kfac-ferminet 0|1  KFAC with FermiNet's Fisher (2 E[g g^T]) and gradient scaling (default 1)\n"
            "  --spring-mu X        SPRING's decay of the previous direction (default 0.95; vmcnet's 0.99)\n"
            "  --spring-fp64 0|1    SPRING's B x B kernel in double (1) or from a float32 copy of the\n"
            "                       gradients (0, default: twice as fast, phi within 1e-4 relative)\n"
            "  --anneal F           over the last fraction F of the training budget (steps or minutes) the step\n"
            "                       shrinks geometrically to --anneal-to times its size (default 0.3; 0: off)\n"
            "  --anneal-to R        the step's final scale, 0 < R <= 1 (default 0.1)\n"
            "  --average F          evaluate with the parameters averaged over the last fraction F of the\n"
            "                       training budget (Polyak averaging; default 0: the last step's)\n"
            "  --scale-moves 0|1    Metropolis moves scaled by the distance to the nuclei (default 0)\n"
            "  --seed S             random seed (default 1)\n"
            "  --threads T          OpenMP threads (default: all cores)\n"
            "output\n"
            "  --out DIR            write train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin, plot.gp and\n"
            "                       training.png (with gnuplot) (default runs/ATOM)\n"
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
/* The --pair spelling of a pair function. */
static const char *pair_name(psf_pair_form f) {
    return f == PSF_PAIR_MLP ? "mlp" : f == PSF_PAIR_BILINEAR_MLP ? "bilinear+mlp" : "bilinear";
}

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
    o->pretrain_steps = -1; /* unset: 400, or 2000 for an atom of >= 10 electrons (below, once the system is known) */
    psf_config_default(&o->net);
    psf_vmc_config_default(&o->vmc);
    o->vmc.batch = 512;
    o->vmc.optimizer = PSF_OPT_SPRING; /* docs/results.md: 24.0 / 21.3 mHa against KFAC's 49.4 / 41.4 at equal time */
    o->vmc.spring_mu = 0.95; /* docs/results.md rounds 19-20, make run, 1000 evaluation steps: 1.2 / 1.3 / 1.1 / 3.6 mHa
                              * against vmcnet's 0.99: 4.7 / 2.1 / 4.0 / 4.3 (seeds 3, 4 on Zen 4; 1, 2 on Zen 5) */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); return -1; }
        if (strncmp(a, "--", 2) != 0) { fprintf(stderr, "psiformer: unexpected argument '%s' (options start with --; see --help)\n", a); return 1; }
        if (i + 1 >= argc) { fprintf(stderr, "psiformer: %s: missing value (or unknown option; see --help)\n", a); return 1; }
        const char *v = argv[++i];
        if (v[0] == '-' && v[1] == '-') { fprintf(stderr, "psiformer: %s: missing value (got the option '%s')\n", a, v); return 1; }
        int rc = 0, iv;
        if (!strcmp(a, "--atom")) { o->atom = v; o->atom_given = 1; }
        else if (!strcmp(a, "--xyz")) o->xyz = v;
        else if (!strcmp(a, "--units")) {
            if (!strcmp(v, "bohr")) o->units_bohr = 1;
            else if (!strcmp(v, "angstrom")) o->units_bohr = 0;
            else { fprintf(stderr, "psiformer: --units: expected bohr or angstrom, got '%s'\n", v); return 1; }
            o->units_given = 1;
        }
        else if (!strcmp(a, "--charge")) {
            char *end;
            errno = 0;
            const long q = strtol(v, &end, 10);
            if (errno || end == v || *end || q < -1000 || q > 1000) {
                fprintf(stderr, "psiformer: --charge: expected an integer from -1000 to 1000, got '%s'\n", v);
                return 1;
            }
            o->charge = (int)q;
            o->charge_given = 1;
        }
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
        else if (!strcmp(a, "--pf-hidden")) rc = parse_int(a, v, 1, &o->net.pf_hidden);
        else if (!strcmp(a, "--pair")) {
            if (!strcmp(v, "bilinear")) o->net.pf_pair = PSF_PAIR_BILINEAR;
            else if (!strcmp(v, "mlp")) o->net.pf_pair = PSF_PAIR_MLP;
            else if (!strcmp(v, "bilinear+mlp")) o->net.pf_pair = PSF_PAIR_BILINEAR_MLP;
            else { fprintf(stderr, "psiformer: --pair: expected bilinear, mlp or bilinear+mlp, got '%s'\n", v); return 1; }
        }
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
        else if (!strcmp(a, "--spring-fp64")) rc = parse_flag01(a, v, &o->vmc.spring_kernel_fp64);
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
    if (o->xyz && o->atom_given) { fprintf(stderr, "psiformer: --atom and --xyz exclude each other: give one system\n"); return 1; }
    if (!o->xyz && (o->units_given || o->charge_given)) {
        fprintf(stderr, "psiformer: --%s needs --xyz (an ion or a molecule is given as an XYZ file)\n", o->units_given ? "units" : "charge");
        return 1;
    }
    if (o->orbitals_from && !o->atom_given && !o->xyz && o->spin >= 0) {
        fprintf(stderr, "psiformer: --spin: the spins of a system read with --orbitals-from are its Molden file's "
                        "occupations (give --atom or --xyz to train that system on these orbitals)\n");
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

/* The machine's physical memory in bytes (0 if the system does not say). */
static double physical_memory(void) {
#if defined(_SC_PHYS_PAGES) && defined(_SC_PAGESIZE)
    const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) return (double)pages * (double)page;
#endif
    return 0;
}

/* Refuses, before anything is allocated for the walkers, a batch whose driver would not fit in the machine's
 * physical memory (psf_vmc_memory); sets the library's own limit (max_bytes) to the same. Returns 0 or 1. */
static int check_memory(const psf_model *m, options *o) {
    size_t need;
    if (psf_vmc_memory(m, &o->vmc, &need)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    const double have = physical_memory();
    if (have > 0 && (need == SIZE_MAX || (double)need > have)) {
        if (need == SIZE_MAX)
            fprintf(stderr, "psiformer: --batch: %d walkers need more bytes of memory than size_t can count (%zu "
                            "parameters), this machine has %.1f GB\n", o->vmc.batch, m->n_params, 1e-9 * have);
        else
            fprintf(stderr, "psiformer: --batch: %d walkers need %.1f GB of memory (%zu bytes, %zu parameters, %s), "
                            "this machine has %.1f GB\n", o->vmc.batch, 1e-9 * (double)need, need, m->n_params,
                    psf_optimizer_name(o->vmc.optimizer), 1e-9 * have);
        return 1;
    }
    o->vmc.max_bytes = have;
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

#define TRAIN_CSV_HEADER "step,energy,variance,pmove,seconds,step_size,grad_norm,gap,walkers_reset,skipped\n"

static int count_commas(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == ',';
    return n;
}

/* After --restore from a checkpoint of `step` completed steps, train_stats.csv keeps its header and the rows of
 * steps 0..step-1 only: rows written after that checkpoint (a run killed between checkpoints) would otherwise be
 * duplicated when training resumes. A header of an older version of this program (the current one's first
 * columns: train_stats.csv gained columns over time) is replaced by the current one and its rows get the new
 * columns empty (*upgraded = the number of columns added); any other header is refused, nothing changed. The
 * file is rewritten through a temporary and a rename. Returns 0, -1 (errno says why) or -2 (unknown header). */
static int trim_train_csv(const char *path, long step, int *upgraded) {
    *upgraded = 0;
    FILE *in = fopen(path, "r");
    if (!in) return errno == ENOENT ? 0 : -1;
    char tmp[1100], line[512], pad[64] = "";
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (!fgets(line, sizeof line, in)) { fclose(in); return 0; } /* empty: train() writes the header */
    const size_t hl = strlen(line);
    if (strcmp(line, TRAIN_CSV_HEADER) != 0) {
        if (!(hl > 1 && line[hl - 1] == '\n' && strncmp(line, TRAIN_CSV_HEADER, hl - 1) == 0 && TRAIN_CSV_HEADER[hl - 1] == ',')) {
            fclose(in);
            return -2;
        }
        *upgraded = count_commas(TRAIN_CSV_HEADER) - count_commas(line);
        for (int i = 0; i < *upgraded && i < (int)sizeof pad - 1; i++) pad[i] = ',';
    }
    FILE *out = fopen(tmp, "w");
    if (!out) { fclose(in); return -1; }
    int ok = fputs(TRAIN_CSV_HEADER, out) != EOF;
    while (fgets(line, sizeof line, in)) {
        char *end;
        const long k = strtol(line, &end, 10);
        const int data = end != line && *end == ',';
        char *nl = strchr(line, '\n');
        if (!(data && k < step && nl)) continue;
        *nl = 0;
        ok = ok && fprintf(out, "%s%s\n", line, pad) > 0;
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
    int upgraded = 0, trc = o->restore && g_rank == 0 ? trim_train_csv(path, v->step, &upgraded) : 0;
    if (trc == -2) {
        fprintf(stderr, "psiformer: --restore: %s has a header this program does not know (not a version of '%.*s'): "
                        "move it away to restore into %s\n", path, (int)strlen(TRAIN_CSV_HEADER) - 1, TRAIN_CSV_HEADER, outdir);
        return 1;
    }
    if (trc) {
        fprintf(stderr, "psiformer: cannot trim %s to the restored step %ld: %s\n", path, v->step, strerror(errno));
        return 1;
    }
    if (upgraded)
        printf("%s: written by an older version; its header is now this version's and its rows have the %d new "
               "column%s empty\n", path, upgraded, upgraded > 1 ? "s" : "");
    FILE *csv = out_open(path, o->restore ? "a" : "w");
    if (!csv) { fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno)); return 1; }
    fseek(csv, 0, SEEK_END);
    if (ftell(csv) == 0) fputs(TRAIN_CSV_HEADER, csv);
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
        /* the budget by rank 0's clock: every rank must take the same decisions (MPI) */
        double clock[2] = {o->train_minutes > 0 && psf_time() - t_train > 60.0 * o->train_minutes,
                           progress(o, s, psf_time() - t_train)};
        if ((rc = psf_vmc_bcast(v, clock, sizeof clock))) break;
        if (clock[0] != 0) {
            printf("%sstopping training at step %ld: --train-minutes %g reached\n", tty ? "\n" : "", s, o->train_minutes);
            break;
        }
        const double p = clock[1];
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
        double gap = NAN, e_w = NAN, e_d = NAN;
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
    const char *target = v->model->cfg.orbitals != PSF_ORBITALS_PFAFFIAN ? "orbitals"
                       : v->model->cfg.pf_pair == PSF_PAIR_MLP      ? "pair matrix"
                                                                    : "pair matrix (via its features)";
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
    FILE *f = out_open(path, "w");
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
    if (g_rank == 0 && sizeof(psf_real) == sizeof(double) && psf_save_npy(path, (const double *)r->average, (int)P, 1))
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
    FILE *csv = out_open(path, "w");
    if (csv) fprintf(csv, "step,energy,variance,pmove,walkers_reset\n");
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
        if (csv) fprintf(csv, "%d,%.10f,%.8f,%.4f,%d\n", s, st.energy, st.variance, st.pmove, st.n_reset);
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

/* The net charge of a system: its nuclear charges minus its electrons. */
static int system_charge(const psf_system *sys) {
    double z = 0;
    for (int a = 0; a < sys->n_atoms; a++) z += sys->Z[a];
    return (int)lround(z) - sys->n_up - sys->n_down;
}

/* The system of a run: an atom from the built-in table (info), or a molecule from --xyz (mol: its row of the
 * reference table when the geometry, charge and spin match one, else NULL). */
typedef struct {
    const char *name;
    const psf_atom_info *info;
    const psf_molecule_info *mol;
} sysinfo;

/* The chosen optimizer's damping and norm constraint (SPRING's or KFAC's); 0 for Adam, which has neither. */
static int optimizer_settings(const psf_vmc_config *c, double *damping, double *norm_constraint) {
    if (c->optimizer == PSF_OPT_SPRING) {
        *damping = c->spring_damping;
        *norm_constraint = c->spring_norm_constraint;
    } else if (c->optimizer == PSF_OPT_KFAC) {
        *damping = c->kfac_damping;
        *norm_constraint = c->kfac_norm_constraint;
    } else return 0;
    return 1;
}

static void write_summary(const char *path, const options *o, const psf_model *m, const psf_vmc *v,
                          const sysinfo *si, int ground, const results *r, double wall) {
    json j = {out_open(path, "w"), 0};
    if (!j.f) { fprintf(stderr, "psiformer: cannot write %s: %s\n", path, strerror(errno)); return; }
    const psf_psiformer_config *pc = &m->cfg.psiformer;
    json_str(&j, "system", si->name);
    if (o->orbitals_from) json_str(&j, "orbitals_from", o->orbitals_from);
    if (si->info) {
        const psf_atom_info *info = si->info;
        const double error_mha = (r->energy - info->exact) * 1e3;
        const double corr = (info->hf_limit - r->energy) / (info->hf_limit - info->exact);
        json_int(&j, "n_up", m->sys.n_up);
        json_int(&j, "n_down", m->sys.n_down);
        json_num(&j, "energy", r->energy);
        json_num(&j, "energy_error", r->error);
        json_num(&j, "variance", r->variance);
        json_fmt(&j, "exact", "%.6f", info->exact);
        json_fmt(&j, "hf_limit", "%.6f", info->hf_limit);
        json_num(&j, "error_mha", ground ? error_mha : NAN);
        json_num(&j, "correlation_fraction", ground && info->hf_limit != info->exact ? corr : NAN);
    } else { /* a molecule: the error against the reference table when the geometry matched a row */
        const psf_molecule_info *mol = si->mol;
        json_str(&j, o->xyz ? "xyz" : "molden", o->xyz ? o->xyz : o->orbitals_from);
        json_int(&j, "n_atoms", m->sys.n_atoms);
        json_int(&j, "charge", system_charge(&m->sys));
        json_int(&j, "spin", m->sys.n_up - m->sys.n_down);
        json_int(&j, "n_up", m->sys.n_up);
        json_int(&j, "n_down", m->sys.n_down);
        json_num(&j, "nuclear_repulsion", psf_nuclear_repulsion(&m->sys));
        json_num(&j, "energy", r->energy);
        json_num(&j, "energy_error", r->error);
        json_num(&j, "variance", r->variance);
        json_num(&j, "exact", mol ? mol->energy : NAN);
        if (mol) json_str(&j, "exact_source", mol->source);
        else json_fmt(&j, "exact_source", "null");
        json_num(&j, "error_mha", mol ? (r->energy - mol->energy) * 1e3 : NAN);
    }
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
    if (o->vmc.optimizer == PSF_OPT_SPRING) {
        json_int(&j, "spring_fp64", o->vmc.spring_kernel_fp64);
        json_fmt(&j, "spring_mu", "%g", o->vmc.spring_mu);
    }
    double damping, norm_constraint;
    if (optimizer_settings(&o->vmc, &damping, &norm_constraint)) {
        json_fmt(&j, "damping", "%g", damping);
        json_fmt(&j, "norm_constraint", "%g", norm_constraint);
    }
    json_int(&j, "network_real_bits", 8 * (int)sizeof(psf_real));
    json_fmt(&j, "lr", "%g", v->cfg.lr);
    json_int(&j, "params", (long)m->n_params);
    json_int(&j, "layers", pc->n_layers);
    json_int(&j, "heads", pc->n_heads);
    json_int(&j, "head_dim", pc->head_dim);
    json_int(&j, "mlp", pc->mlp_hidden);
    json_str(&j, "orbitals", m->cfg.orbitals == PSF_ORBITALS_PFAFFIAN ? "pfaffian" : "det");
    json_int(&j, "dets", m->cfg.n_dets);
    if (m->cfg.orbitals == PSF_ORBITALS_PFAFFIAN) {
        json_str(&j, "pair", pair_name(m->cfg.pf_pair));
        if (m->cfg.pf_pair != PSF_PAIR_BILINEAR) json_int(&j, "pf_hidden", m->cfg.pf_hidden ? m->cfg.pf_hidden : 32);
        if (m->cfg.pf_pair != PSF_PAIR_MLP) json_int(&j, "pf_orbitals", m->cfg.pf_orbitals ? m->cfg.pf_orbitals : 2 * m->n_elec);
    }
    json_int(&j, "en_cusp", m->cfg.use_en_cusp);
    json_fmt(&j, "seed", "%llu", (unsigned long long)o->vmc.seed);
    json_int(&j, "threads", v->n_ws);
    json_int(&j, "mpi_ranks", v->n_ranks);
    json_int(&j, "reblock_size", r->block < 0 ? -r->block : r->block);
    json_fmt(&j, "error_bar_reliable", "%s", r->block > 0 ? "true" : "false");
    json_fmt(&j, "wall_seconds", "%.2f", wall);
    json_fmt(&j, "seconds_sampling", "%.2f", r->seconds[0]);
    json_fmt(&j, "seconds_jet", "%.2f", r->seconds[1]);
    json_fmt(&j, "seconds_backward", "%.2f", r->seconds[2]);
    json_fmt(&j, "seconds_optimizer", "%.2f", r->seconds[3]);
    if (json_end(&j)) fprintf(stderr, "psiformer: cannot write %s\n", path);
}

/* ---- 5. The training curve: DIR/plot.gp, and DIR/training.png when gnuplot is on the PATH ----------------- */

/* The part of plot.gp after its numbers (exact, hf, e_eval, e_err, title); gnuplot 5.4 syntax. It reads
 * train_stats.csv when it runs, so `make plot RUN=DIR` also draws a run that is still training. */
static const char plot_body[] =
    "set datafile separator comma\n"
    "stats \"train_stats.csv\" using 1 skip 1 nooutput\n"
    "N = STATS_records\n"
    "W = N >= 250 ? int(N / 50) : 5     # the moving averages' window (steps)\n"
    "# moving average of the last W values of series i (1: energy, 2: variance) in a ring buffer; NaN is skipped\n"
    "array buf[2 * W]\n"
    "array cnt[2] = [0, 0]\n"
    "array acc[2] = [0.0, 0.0]\n"
    "ma(i, x) = x != x ? NaN : (cnt[i] = cnt[i] + 1, k = (i - 1) * W + (cnt[i] - 1) % W + 1, \\\n"
    "                           acc[i] = acc[i] + x - (cnt[i] > W ? buf[k] : 0), buf[k] = x, acc[i] / (cnt[i] < W ? cnt[i] : W))\n"
    "set table $avg separator comma      # columns: step, moving average of the energy, of the variance\n"
    "plot \"train_stats.csv\" using 1:(ma(1, $2)):(ma(2, $3)) skip 1 with table\n"
    "unset table\n"
    "has_exact = exact == exact          # a molecule's reference energy may come without a Hartree-Fock limit\n"
    "has_hf = has_exact && hf == hf\n"
    "up(x) = x > 0 ? x : NaN             # the error's parts above and below the exact energy, for the log scale\n"
    "down(x) = x < 0 ? -x : NaN\n"
    "\n"
    "if (strstrt(GPVAL_TERMINALS, \"pngcairo\") > 0) { set terminal pngcairo size 900,1050 font \",10\" } else { set terminal png size 900,1050 }\n"
    "set output \"training.png\"\n"
    "set multiplot layout 3,1 title title\n"
    "set grid\n"
    "set lmargin 12\n"
    "set xrange [0:*]\n"
    "\n"
    "# 1. energy: each step's batch mean, its moving average, the exact energy and the Hartree-Fock limit\n"
    "set key outside top center horizontal maxrows 2 samplen 3    # above the panel: it hides no data\n"
    "set ylabel \"energy (Ha)\"\n"
    "# from a little below the exact energy to above the Hartree-Fock limit, widened to the last half of the\n"
    "# moving average (a short run may still be far above the exact energy)\n"
    "if (has_hf) {\n"
    "    lo = exact - 0.25 * (hf - exact); hi = hf + 0.75 * (hf - exact)\n"
    "    stats $avg using 2 every ::int(0.5 * N) nooutput\n"
    "    if (STATS_max + 0.1 * (hf - exact) > hi) { hi = STATS_max + 0.1 * (hf - exact) }\n"
    "    if (STATS_min - 0.1 * (hf - exact) < lo) { lo = STATS_min - 0.1 * (hf - exact) }\n"
    "    set yrange [lo : hi]\n"
    "} else { if (has_exact) {          # no Hartree-Fock limit: the last half of the moving average and the exact energy\n"
    "    stats $avg using 2 every ::int(0.5 * N) nooutput\n"
    "    lo = STATS_min < exact ? STATS_min : exact; hi = STATS_max; d = hi - lo + 1e-3\n"
    "    set yrange [lo - 0.1 * d : hi + 0.1 * d]\n"
    "} }\n"
    "if (has_hf) {\n"
    "plot \"train_stats.csv\" using 1:2 skip 1 with points pt 7 ps 0.3 lc rgb \"#b0b0b0\" title \"E (batch mean)\", \\\n"
    "     $avg using 1:2 with lines lw 2 lc rgb \"#1f77b4\" title sprintf(\"moving average (%d steps)\", W), \\\n"
    "     exact with lines dt 2 lw 1.5 lc rgb \"black\" title sprintf(\"exact %.6f\", exact), \\\n"
    "     hf with lines dt 4 lw 1.5 lc rgb \"#d62728\" title sprintf(\"Hartree-Fock limit %.6f\", hf)\n"
    "} else { if (has_exact) {\n"
    "plot \"train_stats.csv\" using 1:2 skip 1 with points pt 7 ps 0.3 lc rgb \"#b0b0b0\" title \"E (batch mean)\", \\\n"
    "     $avg using 1:2 with lines lw 2 lc rgb \"#1f77b4\" title sprintf(\"moving average (%d steps)\", W), \\\n"
    "     exact with lines dt 2 lw 1.5 lc rgb \"black\" title sprintf(\"reference %.6f\", exact)\n"
    "} else {\n"
    "plot \"train_stats.csv\" using 1:2 skip 1 with points pt 7 ps 0.3 lc rgb \"#b0b0b0\" title \"E (batch mean)\", \\\n"
    "     $avg using 1:2 with lines lw 2 lc rgb \"#1f77b4\" title sprintf(\"moving average (%d steps)\", W)\n"
    "} }\n"
    "\n"
    "# 2. the moving average's error against the exact energy, log scale (mHa)\n"
    "set key outside top center horizontal maxrows 2 samplen 3\n"
    "set ylabel \"E - E_{exact} (mHa)\"\n"
    "set yrange [*:*]\n"
    "set logscale y\n"
    "set format y \"10^{%L}\"\n"
    "eval_title = sprintf(\"evaluated: %.2f +/- %.2f mHa\", 1000 * (e_eval - exact), 1000 * e_err)\n"
    "if (has_hf) {\n"
    "plot $avg using 1:(up(1000 * ($2 - exact))) with lines lw 2 lc rgb \"#1f77b4\" title \"moving average\", \\\n"
    "     $avg using 1:(down(1000 * ($2 - exact))) with lines lw 1 lc rgb \"#9ecae1\" title \"moving average below exact: |E - E_{exact}|\", \\\n"
    "     1000 * (hf - exact) with lines dt 4 lw 1.5 lc rgb \"#d62728\" title \"Hartree-Fock limit\", \\\n"
    "     1.6 with lines dt 3 lw 1.5 lc rgb \"#2ca02c\" title \"chemical accuracy (1.6 mHa)\", \\\n"
    "     up(1000 * (e_eval - exact)) with lines dt 2 lw 1.5 lc rgb \"black\" title eval_title\n"
    "} else { if (has_exact) {\n"
    "plot $avg using 1:(up(1000 * ($2 - exact))) with lines lw 2 lc rgb \"#1f77b4\" title \"moving average\", \\\n"
    "     $avg using 1:(down(1000 * ($2 - exact))) with lines lw 1 lc rgb \"#9ecae1\" title \"moving average below the reference: |E - E_{ref}|\", \\\n"
    "     1.6 with lines dt 3 lw 1.5 lc rgb \"#2ca02c\" title \"chemical accuracy (1.6 mHa)\", \\\n"
    "     up(1000 * (e_eval - exact)) with lines dt 2 lw 1.5 lc rgb \"black\" title eval_title\n"
    "} else {\n"
    "set label 1 \"no exact energy for this spin\" at graph 0.5, 0.5 center\n"
    "set yrange [0.1 : 10]\n"
    "plot 1 with lines lc rgb \"white\" notitle  # an empty panel (a plot of NaN alone is an error in gnuplot)\n"
    "unset label 1\n"
    "} }\n"
    "set yrange [*:*]\n"
    "\n"
    "# 3. the variance of the local energy\n"
    "set key outside top center horizontal maxrows 2 samplen 3    # above the panel: it hides no data\n"
    "set ylabel \"var E_L (Ha^2)\"\n"
    "set xlabel \"training step\"\n"
    "plot \"train_stats.csv\" using 1:3 skip 1 with points pt 7 ps 0.3 lc rgb \"#b0b0b0\" title \"var E_L (batch)\", \\\n"
    "     $avg using 1:3 with lines lw 2 lc rgb \"#ff7f0e\" title \"moving average\"\n"
    "unset multiplot\n";

static void gp_number(FILE *f, const char *name, double x, const char *comment) {
    if (isfinite(x)) fprintf(f, "%-7s= %.10g    # %s\n", name, x, comment);
    else fprintf(f, "%-7s= NaN    # %s\n", name, comment);
}

/* Writes DIR/plot.gp: the run's numbers (exact and Hartree-Fock energies when the spin is the ground state's, the
 * evaluated energy) and plot_body. Returns 0 or -1. */
static int write_plot_script(const char *outdir, const options *o, const char *name, const psf_system *sys,
                             const psf_atom_info *info, int ground, const results *r) {
    char path[1024];
    snprintf(path, sizeof path, "%s/plot.gp", outdir);
    FILE *f = out_open(path, "w");
    if (!f) return -1;
    fprintf(f, "# plot.gp: the training curve of a psiformer run (written by build/psiformer into its --out directory).\n"
               "# In this directory: gnuplot plot.gp (from the repository: make plot RUN=<this directory>). It reads\n"
               "# train_stats.csv, also while a run is training, and writes training.png. Needs gnuplot 5.4.\n");
    fprintf(f, "title  = \"%s (%d up, %d down): %s, batch %d, %ld training steps\"\n", name, sys->n_up, sys->n_down,
            psf_optimizer_name(o->vmc.optimizer), o->vmc.batch, r->done);
    gp_number(f, "exact", ground ? o->exact : NAN, "Ha: exact energy (built-in tables; NaN: none for this system and spin)");
    gp_number(f, "hf", ground && info ? info->hf_limit : NAN, "Ha: Hartree-Fock limit (NaN: not for this system and spin)");
    gp_number(f, "e_eval", r->energy, "Ha: the evaluated energy (NaN: not evaluated)");
    gp_number(f, "e_err", r->error, "Ha: its reblocked error bar");
    fputs("\n", f);
    fputs(plot_body, f);
    return fclose(f) == 0 ? 0 : -1;
}

/* The full path of an executable `name` on the PATH into out; 0 if there is none. */
static int find_on_path(const char *name, char *out, size_t n) {
    const char *p = getenv("PATH");
    while (p && *p) {
        const char *colon = strchr(p, ':');
        const size_t len = colon ? (size_t)(colon - p) : strlen(p);
        if (len == 0) snprintf(out, n, "./%s", name); /* an empty entry is the current directory */
        else snprintf(out, n, "%.*s/%s", (int)len, p, name);
        struct stat st;
        if (stat(out, &st) == 0 && S_ISREG(st.st_mode) && access(out, X_OK) == 0) return 1;
        if (!colon) break;
        p = colon + 1;
    }
    return 0;
}

/* Runs `gnuplot plot.gp` in DIR, its messages into DIR/plot.log. Returns gnuplot's exit status (-1: could not
 * start it). */
static int run_gnuplot(const char *gnuplot, const char *outdir) {
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (chdir(outdir) != 0) _exit(126);
        const int fd = open("plot.log", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); close(fd); }
        execl(gnuplot, "gnuplot", "plot.gp", (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* plot.gp, then training.png if gnuplot is installed; otherwise one line on how to get it. Never fails the run:
 * returns 1 if training.png was made, else 0. */
static int plot_training(const char *outdir, const options *o, const char *name, const psf_system *sys,
                         const psf_atom_info *info, int ground, const results *r) {
    if (write_plot_script(outdir, o, name, sys, info, ground, r)) {
        fprintf(stderr, "psiformer: warning: cannot write %s/plot.gp: %s\n", outdir, strerror(errno));
        return 0;
    }
    char gnuplot[1024];
    if (!find_on_path("gnuplot", gnuplot, sizeof gnuplot)) {
        printf("training curve: %s/plot.gp written; for the PNG, apt-get install gnuplot-nox, then make plot RUN=%s\n",
               outdir, outdir);
        return 0;
    }
    const int rc = run_gnuplot(gnuplot, outdir);
    if (rc != 0) {
        fprintf(stderr, "psiformer: warning: gnuplot %s/plot.gp failed (exit %d; its messages: %s/plot.log)\n", outdir,
                rc, outdir);
        return 0;
    }
    char log[1100];
    snprintf(log, sizeof log, "%s/plot.log", outdir);
    struct stat st;
    if (stat(log, &st) == 0 && st.st_size == 0) remove(log); /* kept only when gnuplot said something */
    return 1;
}

/* ---- The program -------------------------------------------------------------------------------------------- */

static int run(int argc, char **argv) {
    options o;
    const int pa = parse_args(argc, argv, &o);
    if (pa) return pa < 0 ? 0 : 2;
    psf_system sys;
    sysinfo si = {o.atom, NULL, NULL};
    char xyzname[256];
    int ground;
    /* --orbitals-from: the pretraining target; without --atom or --xyz also the system (its [Atoms] and occupations) */
    psf_molden mol;
    memset(&mol, 0, sizeof mol);
    if (o.orbitals_from && psf_molden_load(&mol, o.orbitals_from)) { fprintf(stderr, "psiformer: --orbitals-from: %s\n", psf_last_error()); return 2; }
    const int from_molden = o.orbitals_from && !o.atom_given && !o.xyz;
    const char *source = o.xyz ? o.xyz : o.orbitals_from; /* the file a molecule comes from */
    if (o.xyz || from_molden) {
        if (o.xyz && psf_system_from_xyz(&sys, o.xyz, o.units_bohr, o.charge, o.spin)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
        if (from_molden && psf_molden_system(&mol, &sys)) { fprintf(stderr, "psiformer: --orbitals-from: %s\n", psf_last_error()); return 2; }
        si.mol = psf_molecule_match(&sys, 1e-3); /* bohr */
        const char *base = strrchr(source, '/');
        snprintf(xyzname, sizeof xyzname, "%s", base ? base + 1 : source);
        char *dot = strrchr(xyzname, '.');
        if (dot && dot != xyzname) *dot = 0;
        si.name = si.mol ? si.mol->name : xyzname;
        ground = si.mol != NULL;
        o.exact = ground ? si.mol->energy : NAN;
    } else {
        if (psf_system_atom(&sys, o.atom, o.spin)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
        si.info = psf_atom_lookup(o.atom);
        ground = (o.spin < 0 || o.spin == si.info->n_up - si.info->n_down);
        o.exact = ground ? si.info->exact : NAN;
    }
    /* The default pretraining length (docs/results.md): 400 steps, 30 s for carbon on 2 cores, where 2000 gained
     * nothing at equal wall time (rounds 7-8); 2000 for an atom of 10 or more electrons (Ne), where 400 leave the
     * start far above HF and 2000 at equal wall time gave 32.4 / 76.7 mHa against 109.0 / 208.9 (seeds 1 / 2,
     * rounds 8-9). Molecules keep 400: not measured. */
    if (o.pretrain_steps < 0) o.pretrain_steps = !(o.xyz || from_molden) && sys.n_up + sys.n_down >= 10 ? 2000 : 400;
    const psf_atom_info *info = si.info;
    char outdir[512], path[1024];
    if (o.out) snprintf(outdir, sizeof outdir, "%s", o.out); else snprintf(outdir, sizeof outdir, "runs/%s", si.info ? o.atom : xyzname);
    if (g_rank == 0 && mkdir_p(outdir)) { fprintf(stderr, "psiformer: cannot create output directory %s: %s\n", outdir, strerror(errno)); return 1; }
    snprintf(path, sizeof path, "%s/.psiformer_write_test", outdir); /* before any training, not after it */
    FILE *probe = out_open(path, "w");
    if (!probe || fclose(probe) != 0) { fprintf(stderr, "psiformer: --out: cannot write into %s: %s\n", outdir, strerror(errno)); return 1; }
    if (g_rank == 0) remove(path);

    psf_model m;
    if (psf_model_init(&m, &sys, &o.net, o.vmc.seed)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 2; }
    if (check_memory(&m, &o)) { psf_model_free(&m); return 2; }
    const double t_start = psf_time();
    psf_vmc v;
#ifdef PSF_USE_MPI
    o.vmc.mpi_comm = &g_comm;
#endif
    if (psf_vmc_init(&v, &m, &o.vmc)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    v.walkers.scale_moves = o.scale_moves;
    if (o.restore && psf_vmc_load(&v, o.restore)) { fprintf(stderr, "psiformer: %s\n", psf_last_error()); return 1; }
    const psf_psiformer_config *pc = &o.net.psiformer;
    if (info)
        printf("psiformer.h: %s (Z = %d, %d up, %d down), exact %.6f Ha%s\n", o.atom, info->Z, sys.n_up, sys.n_down,
               info->exact, ground ? "" : " (ground state; this run uses another spin)");
    else if (si.mol)
        printf("psiformer.h: %s from %s (%d atoms, charge %d, %d up, %d down), nuclear repulsion %.6f Ha, reference %.6f Ha (%s)\n",
               si.name, source, sys.n_atoms, system_charge(&sys), sys.n_up, sys.n_down, psf_nuclear_repulsion(&sys), si.mol->energy,
               si.mol->source);
    else
        printf("psiformer.h: %s (%d atoms, charge %d, %d up, %d down), nuclear repulsion %.6f Ha, no reference energy "
               "for this geometry\n", source, sys.n_atoms, system_charge(&sys), sys.n_up, sys.n_down, psf_nuclear_repulsion(&sys));
    char head[128];
    if (o.net.orbitals == PSF_ORBITALS_PFAFFIAN && o.net.pf_pair == PSF_PAIR_MLP)
        snprintf(head, sizeof head, "%d Pfaffians of a pair MLP (hidden %d)%s", o.net.n_dets,
                 o.net.pf_hidden ? o.net.pf_hidden : 32, m.n_elec & 1 ? " (bordered: odd N)" : "");
    else if (o.net.orbitals == PSF_ORBITALS_PFAFFIAN && o.net.pf_pair == PSF_PAIR_BILINEAR_MLP)
        snprintf(head, sizeof head, "%d Pfaffians of %d orbital features + a pair MLP (hidden %d)%s", o.net.n_dets,
                 o.net.pf_orbitals ? o.net.pf_orbitals : 2 * m.n_elec, o.net.pf_hidden ? o.net.pf_hidden : 32,
                 m.n_elec & 1 ? " (bordered: odd N)" : "");
    else if (o.net.orbitals == PSF_ORBITALS_PFAFFIAN)
        snprintf(head, sizeof head, "%d Pfaffians of %d orbital features%s", o.net.n_dets,
                 o.net.pf_orbitals ? o.net.pf_orbitals : 2 * m.n_elec, m.n_elec & 1 ? " (bordered: odd N)" : "");
    else snprintf(head, sizeof head, "%d determinants", o.net.n_dets);
    printf("network: %d layers, %d heads x %d, mlp %d, %s%s, %zu parameters, %s\n", pc->n_layers, pc->n_heads,
           pc->head_dim, pc->mlp_hidden, head, o.net.use_en_cusp ? ", e-n cusp Jastrow" : "", m.n_params,
           sizeof(psf_real) == sizeof(float) ? "float32 (PSF_REAL float)" : "float64");
    char budget[96];
    if (o.steps > 0 && o.train_minutes > 0) snprintf(budget, sizeof budget, "%d train steps (at most %.1f min)", o.steps, o.train_minutes);
    else if (o.steps > 0) snprintf(budget, sizeof budget, "%d train steps", o.steps);
    else snprintf(budget, sizeof budget, "%.1f min of training", o.train_minutes);
    char ranks[48] = "";
    if (v.n_ranks > 1) snprintf(ranks, sizeof ranks, " on each of %d MPI ranks", v.n_ranks);
    char hyper[96] = "", mu[32] = ""; /* the optimizer's settings, so that the log alone reproduces the run */
    double damping, norm_constraint;
    if (o.vmc.optimizer == PSF_OPT_SPRING) snprintf(mu, sizeof mu, "mu %g, ", o.vmc.spring_mu);
    if (optimizer_settings(&o.vmc, &damping, &norm_constraint))
        snprintf(hyper, sizeof hyper, " (%sdamping %g, norm constraint %g)", mu, damping, norm_constraint);
    printf("vmc: %s lr %.3g%s, batch %d, %d mcmc steps/iter, %s + %d eval steps, seed %llu, %d threads%s%s%s\n",
           psf_optimizer_name(o.vmc.optimizer), v.cfg.lr, hyper, o.vmc.batch, o.vmc.mcmc_steps, budget, o.eval_steps,
           (unsigned long long)o.vmc.seed, v.n_ws, ranks, o.restore ? ", restored from " : "", o.restore ? o.restore : "");
    fflush(stdout);

    results r;
    memset(&r, 0, sizeof r);
    psf_reference probe_ref;
    if ((o.xyz || from_molden) && !o.orbitals_from && o.pretrain_steps > 0 && !o.restore &&
        psf_reference_hf_atom(&probe_ref, &sys, NULL)) {
        /* The built-in Hartree-Fock target is one neutral ground-state atom; a molecule's orbitals come from a
         * Molden file (--orbitals-from). */
        printf("pretraining: skipped: the built-in Hartree-Fock orbitals are for one neutral atom H..Ne in its ground "
               "state, not for this system (give its orbitals with --orbitals-from FILE.molden); training starts from "
               "the network's initialisation\n");
        o.pretrain_steps = 0;
    }
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
    write_summary(path, &o, &m, &v, &si, ground, &r, wall);
    const int png = g_rank == 0 && plot_training(outdir, &o, si.name, &sys, info, ground, &r);
    printf("outputs in %s/ (train_stats.csv, eval_stats.csv, summary.json, checkpoint.bin, plot.gp%s)\n", outdir,
           png ? ", training.png" : "");
    if (o.eval_steps == 0)
        printf("E: not evaluated (--eval-steps 0); the parameters are in %s/checkpoint.bin\n", outdir);
    else if (!info && si.mol)
        printf("E = %.6f +/- %.6f Ha  (%s reference %.6f, error %.1f mHa)\n", r.energy, r.error, si.name, si.mol->energy,
               (r.energy - si.mol->energy) * 1e3);
    else if (!info)
        printf("E = %.6f +/- %.6f Ha  (no reference energy for this geometry, charge and spin)\n", r.energy, r.error);
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

int main(int argc, char **argv) {
#ifdef PSF_USE_MPI
    MPI_Init(&argc, &argv);
    g_comm = MPI_COMM_WORLD;
    MPI_Comm_rank(g_comm, &g_rank);
    if (g_rank != 0 && (!freopen("/dev/null", "w", stdout) || !freopen("/dev/null", "w", stderr))) MPI_Abort(g_comm, 1);
    const int rc = run(argc, argv);
    if (rc) { /* a rank that stops alone would leave the others waiting in a collective: abort them all, but give
                 rank 0, the one that prints, a moment to say why when every rank fails at once */
        if (g_rank != 0) sleep(1);
        MPI_Abort(g_comm, rc);
    }
    MPI_Finalize();
    return rc;
#else
    return run(argc, argv);
#endif
}
