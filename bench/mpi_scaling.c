/* mpi_scaling — what splitting the walkers over MPI ranks moves and costs (issue 13; docs/scaling.md).
 *
 * 1. Bytes gathered per training iteration (psiformer.h, PSF_USE_MPI: every rank receives the other ranks' rows of
 *    each gathered array, (R-1)/R of it), for carbon and neon with the make-run network, by item.
 * 2. On this machine (all threads): a carbon training step's per-walker work (sampling + local energies + backward)
 *    and optimizer time at batches 256 and 512, for KFAC and SPRING; SPRING's optimizer is fitted as a B + c B^2
 *    (its B x B kernel is the B^2 part).
 * 3. A projection of FermiNet's carbon protocol (4096 walkers, 2 x 10^5 iterations) on R two-core nodes, with
 *    the network model given below (latency ALPHA, bandwidth BETA per link; ring all-gathers).
 * Prints; asserts nothing. Timings vary by machine and load: state the CPU model beside them.
 *   make build/mpi_scaling && build/mpi_scaling [steps per timing, default 4] */
#define PSIFORMER_IMPLEMENTATION
#include "../psiformer.h"
#include <math.h>
#include <stdlib.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* The network model: a 100 Gb/s link (InfiniBand EDR / 100 GbE) delivering 11 GB/s to MPI (88 % of 12.5 GB/s) with
 * 2 us per message (Open MPI ping-pong half round trips are 1-2 us on such links; docs/scaling.md). */
#define ALPHA 2e-6
#define BETA 11e9
#define TILES 10 /* SPRING's kernel: the upper tiles of its fixed 4 x 4 grid */

typedef struct { const char *atom; int N; size_t P, stat; } sysinfo;

static sysinfo describe(const char *atom) {
    sysinfo s = {atom, 0, 0, 0};
    psf_system sys;
    psf_system_atom(&sys, atom, -1);
    psf_config net;
    psf_config_default(&net);
    psf_model m;
    psf_model_init(&m, &sys, &net, 1);
    psf_vmc_config c;
    psf_vmc_config_default(&c);
    c.batch = 64;
    c.burn_in = 0;
    c.optimizer = PSF_OPT_KFAC;
    psf_vmc v;
    psf_vmc_init(&v, &m, &c);
    s.N = m.n_elec;
    s.P = m.n_params;
    s.stat = ((const psf_kfac *)v.opt_state)->stat_reals;
    psf_vmc_free(&v);
    psf_model_free(&m);
    return s;
}

/* Bytes gathered per training iteration at batch B, by item (what psiformer.h's psf__mpi_gather calls move). */
typedef struct { double walkers, eloc, refresh, chunks, kfac, spring_rows, spring_tiles; } volume;
static volume bytes_per_iteration(const sysinfo *s, double B, double C) {
    volume v;
    v.walkers = B * (3.0 * s->N * sizeof(psf_real) + sizeof(double) + sizeof(int) + sizeof(psf_rng)); /* after MCMC */
    v.eloc = B * sizeof(double);
    v.refresh = B * (sizeof(double) + sizeof(int)); /* log|psi| and signs after the update */
    v.chunks = C * s->P * sizeof(psf_real);        /* the gradient's reduction chunks (PSF_CHUNKS) */
    v.kfac = C * s->stat * sizeof(double);         /* KFAC: the chunks' Kronecker statistics */
    v.spring_rows = B * (s->P * sizeof(psf_real) + 1); /* SPRING: per-walker gradients and valid flags */
    v.spring_tiles = TILES * (B / 4) * (B / 4) * sizeof(double); /* SPRING: kernel tiles, broadcast by their owner */
    return v;
}

/* Ring all-gather of V bytes in all over R ranks; a broadcast of m bytes (scatter + all-gather). */
static double t_allgather(double V, int R) { return R > 1 ? (R - 1) * ALPHA + (R - 1.0) / R * V / BETA : 0; }
static double t_bcast(double m, int R) { return R > 1 ? log2((double)R) * ALPHA + 2.0 * m / BETA : 0; }

/* Seconds per carbon training step on this machine: per-walker work w and optimizer o, averaged over `steps`. */
static void time_steps(psf_optimizer opt, int B, int steps, double *w, double *o) {
    psf_system sys;
    psf_system_atom(&sys, "C", -1);
    psf_config net;
    psf_config_default(&net);
    psf_model m;
    psf_model_init(&m, &sys, &net, 1);
    psf_vmc_config c;
    psf_vmc_config_default(&c);
    c.batch = B;
    c.burn_in = 20;
    c.optimizer = opt;
    psf_vmc v;
    if (psf_vmc_init(&v, &m, &c)) { fprintf(stderr, "mpi_scaling: %s\n", psf_last_error()); exit(1); }
    psf_step_stats st;
    psf_vmc_train_step(&v, &st); /* warm-up */
    *w = *o = 0;
    for (int i = 0; i < steps; i++) {
        psf_vmc_train_step(&v, &st);
        *w += (st.t_sample + st.t_jet + st.t_backward) / steps;
        *o += st.t_optimizer / steps;
    }
    psf_vmc_free(&v);
    psf_model_free(&m);
}

int main(int argc, char **argv) {
    const int steps = argc > 1 ? atoi(argv[1]) : 4;
    const double BF = 4096, ITER = 2e5;
    const int ranks[] = {1, 8, 64, 512};
    printf("1. bytes gathered per training iteration with 32 reduction chunks (each rank receives (R-1)/R of them)\n");
    sysinfo sy[2] = {describe("C"), describe("Ne")};
    printf("%-4s %3s %8s %10s | %6s %12s %10s %10s %10s %10s %12s %12s\n", "atom", "N", "params", "KFAC stats", "batch",
           "walkers", "E_L", "refresh", "gradient", "KFAC", "SPRING rows", "SPRING tiles");
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 2; k++) {
            const double B = k ? BF : 512;
            const volume v = bytes_per_iteration(&sy[a], B, 32);
            printf("%-4s %3d %8zu %10zu | %6.0f %9.2f MB %7.2f MB %7.2f MB %7.2f MB %7.2f MB %9.1f MB %9.1f MB\n", sy[a].atom,
                   sy[a].N, sy[a].P, sy[a].stat, B, 1e-6 * v.walkers, 1e-6 * v.eloc, 1e-6 * v.refresh, 1e-6 * v.chunks,
                   1e-6 * v.kfac, 1e-6 * v.spring_rows, 1e-6 * v.spring_tiles);
        }
    int threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    printf("\n2. carbon training step on this machine (%d threads), seconds\n", threads);
    double wk[2], ok[2], ws[2], os[2];
    const int Bs[2] = {256, 512};
    for (int i = 0; i < 2; i++) {
        time_steps(PSF_OPT_KFAC, Bs[i], steps, &wk[i], &ok[i]);
        time_steps(PSF_OPT_SPRING, Bs[i], steps, &ws[i], &os[i]);
        printf("batch %4d: KFAC per-walker work %.3f, optimizer %.3f | SPRING per-walker work %.3f, optimizer %.3f\n", Bs[i],
               wk[i], ok[i], ws[i], os[i]);
    }
    /* SPRING's B x B Cholesky factorisation (B^3 / 3 flops, repeated on every rank), timed at B = 1024 */
    const int nc = 1024;
    double *A = (double *)malloc(sizeof(double) * nc * nc);
    for (int i = 0; i < nc; i++)
        for (int j = 0; j < nc; j++) A[(size_t)i * nc + j] = (i == j ? nc : 0) + 1.0 / (1.0 + abs(i - j));
    double *A0 = (double *)malloc(sizeof(double) * nc * nc);
    memcpy(A0, A, sizeof(double) * nc * nc);
    double t0 = psf_time();
    psf__cholesky(nc, A);
    const double dc = (psf_time() - t0) / ((double)nc * nc * nc);
    t0 = psf_time();
    psf__cholesky_unblocked(nc, A0, nc); /* the unblocked loop it replaced, for the ratio */
    const double du = (psf_time() - t0) / ((double)nc * nc * nc);
#ifdef PSF__LAPACK
    const char *chol = "LAPACK dpotrf";
#else
    const char *chol = "built-in blocked";
#endif
    printf("Cholesky factorisation at B = %d: %s %.3f s, the unblocked loop %.3f s (%.1fx)\n", nc, chol,
           dc * nc * nc * nc, du * nc * nc * nc, du / dc);
    free(A); free(A0);
    /* SPRING's optimizer o(B) = a B + c B^2 + d B^3 (d from the Cholesky timing) through the two points */
    const double b1 = Bs[0], b2 = Bs[1];
    const double r1 = os[0] - dc * b1 * b1 * b1, r2 = os[1] - dc * b2 * b2 * b2;
    const double cq = (r2 / b2 - r1 / b1) / (b2 - b1), al = r1 / b1 - cq * b1;
    const double walker_cost = 0.5 * (wk[1] + ws[1]) / b2; /* per walker, seconds */
    printf("SPRING optimizer fit: %.3g B + %.3g B^2 + %.3g B^3 s (B^2: the kernel; B^3: the Cholesky factorisation, "
           "%.3f s at B = %d); per-walker work %.3g s per walker\n", al, cq, dc, dc * nc * nc * nc, nc, walker_cost);
    printf("\n3. FermiNet's carbon protocol (%.0f walkers, %.0e iterations) on R two-core nodes like this one\n", BF, ITER);
    printf("   network: %.0f us per message, %.0f GB/s per link; ring all-gathers\n", ALPHA * 1e6, BETA * 1e-9);
    printf("%6s | %10s %10s %10s %10s | %10s %10s %10s %10s\n", "nodes", "KFAC work", "optimizer", "network", "days",
           "SPRING wk", "optimizer", "network", "days");
    for (int i = 0; i < 4; i++) {
        const int R = ranks[i];
        /* more than 32 ranks need as many chunks: built with -DPSF_CHUNKS=R (docs/scaling.md) */
        const volume v = bytes_per_iteration(&sy[0], BF, R > 32 ? R : 32);
        const double work = walker_cost * BF / R;
        const double common = t_allgather(v.walkers, R) + t_allgather(v.eloc, R) + t_allgather(v.refresh, R) +
                              t_allgather(v.chunks, R);
        const double net_k = common + t_allgather(v.kfac, R), opt_k = ok[1];
        const double net_s = common + t_allgather(v.spring_rows, R) + TILES * t_bcast(v.spring_tiles / TILES, R);
        /* SPRING: the B-linear part and the Cholesky factorisation are done by every rank; the kernel's 10 tiles are split over the ranks and, within
         * a rank, over its 2 threads: ceil(ceil(10 / R) / 2) tile times, a tile being 1/5 of the kernel on one node */
        const double kernel1 = cq * BF * BF, tiles = ceil(ceil((double)TILES / R) / 2.0);
        const double opt_s = al * BF + kernel1 * tiles / 5.0 + dc * BF * BF * BF;
        printf("%6d | %9.3fs %9.3fs %9.3fs %10.1f | %9.3fs %9.3fs %9.3fs %10.1f\n", R, work, opt_k, net_k,
               ITER * (work + opt_k + net_k) / 86400, work, opt_s, net_s, ITER * (work + opt_s + net_s) / 86400);
    }
    return 0;
}
