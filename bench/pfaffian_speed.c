/* pfaffian_speed.c — the Pfaffian (psf_logpfaffian, skew Parlett–Reid) against the LU log-determinant
 * (psf_logdet) of the same matrix, for even orders 2n = 4..64 (issue 9, "the Pfaffian's speed against the LU
 * log-determinant for the same size"). Not part of `make test`; `make bench-pfaffian` builds and runs it.
 *
 *   build/pfaffian_speed [--samples S] [--target-us T] [--max-order N] [--seed X]
 *
 * For each order n one random skew-symmetric matrix (entries of B - B^T, B uniform in [-1, 1)) is factored over
 * and over by each routine. A sample is the mean time of R back-to-back calls, R chosen so that one sample takes
 * about T microseconds (default 2000; R >= 1); the table gives the median of S samples (default 51) per call, for
 * each routine, with the samples of the two routines interleaved so that a change of clock speed or load during
 * the run affects both alike. Each call's result is accumulated into a checksum that is printed, so the compiler
 * cannot drop the calls, and 2 log|Pf A| is checked against log|det A| (Pf^2 = det) before timing each order.
 * The CPU model (from /proc/cpuinfo), the thread count (1: both routines are serial) and the build are printed
 * with the table. Timings are printed, never asserted.
 */
#define PSIFORMER_IMPLEMENTATION
#include "psiformer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* The "model name" line of /proc/cpuinfo (x86), else "Hardware"/"CPU part" (ARM), else "unknown". */
static void cpu_model(char *out, size_t size) {
    snprintf(out, size, "unknown");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    int found = 0; /* 0: nothing yet, 1: an ARM fallback line, 2: "model name" */
    while (found < 2 && fgets(line, sizeof line, f)) {
        const int model = !strncmp(line, "model name", 10);
        const int fallback = !strncmp(line, "Hardware", 8) || !strncmp(line, "CPU part", 8);
        const char *colon = strchr(line, ':');
        if (!colon || !(model || (fallback && !found))) continue;
        for (colon++; *colon == ' ' || *colon == '\t'; colon++) {}
        snprintf(out, size, "%s", colon);
        out[strcspn(out, "\n")] = 0;
        found = model ? 2 : 1;
    }
    fclose(f);
}

static volatile double checksum_sink;

/* mean seconds per call of R calls of one routine (which = 0: Pfaffian, 1: LU) on A */
static double sample(int which, int n, int R, const psf_real *A, psf_real *work, int *piv, double *checksum) {
    double acc = 0;
    int sign = 0;
    const double t0 = now_seconds();
    for (int r = 0; r < R; r++) {
        acc += which == 0 ? psf_logpfaffian(n, A, work, &sign) : psf_logdet(n, A, work, piv, &sign);
        acc += sign;
    }
    const double t = now_seconds() - t0;
    *checksum += acc;
    return t / R;
}

int main(int argc, char **argv) {
    int samples = 51, max_order = 64;
    double target_us = 2000;
    unsigned long long seed = 9;
    for (int a = 1; a < argc; a++) {
        const char *k = argv[a];
        if (a + 1 >= argc) { fprintf(stderr, "pfaffian_speed: %s needs a value\n", k); return 2; }
        const char *v = argv[++a];
        if (!strcmp(k, "--samples")) samples = atoi(v);
        else if (!strcmp(k, "--target-us")) target_us = atof(v);
        else if (!strcmp(k, "--max-order")) max_order = atoi(v);
        else if (!strcmp(k, "--seed")) seed = strtoull(v, NULL, 10);
        else {
            fprintf(stderr, "usage: %s [--samples S] [--target-us T] [--max-order N] [--seed X]\n", argv[0]);
            return 2;
        }
    }
    if (samples < 1 || target_us <= 0 || max_order < 4 || max_order > 1024) {
        fprintf(stderr, "pfaffian_speed: need --samples >= 1, --target-us > 0, 4 <= --max-order <= 1024\n");
        return 2;
    }
    const int orders[] = {4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 128, 256, 512, 1024};
    const int n_orders = (int)(sizeof orders / sizeof orders[0]);

    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    printf("pfaffian_speed: psf_logpfaffian (skew Parlett-Reid) vs psf_logdet (LU), one thread, same matrix\n");
    printf("cpu: %s\n", cpu);
    printf("build: %s, psf_real = %zu bytes; median of %d samples of ~%.0f us each\n",
#ifdef __OPTIMIZE__
           "optimised",
#else
           "not optimised",
#endif
           sizeof(psf_real), samples, target_us);
    printf("%6s %8s %14s %14s %10s %12s\n", "order", "calls", "Pf [ns/call]", "LU [ns/call]", "LU / Pf", "|2lPf-ldet|");

    const size_t maxnn = (size_t)max_order * max_order;
    psf_real *A = malloc(maxnn * sizeof *A), *work = malloc(maxnn * sizeof *work);
    int *piv = malloc((size_t)max_order * sizeof *piv);
    double *tp = malloc((size_t)samples * sizeof *tp), *tl = malloc((size_t)samples * sizeof *tl);
    if (!A || !work || !piv || !tp || !tl) { fprintf(stderr, "pfaffian_speed: out of memory\n"); return 1; }
    psf_rng rng;
    psf_rng_seed(&rng, (uint64_t)seed, 0x9FAFF1A0ULL);
    double checksum = 0;
    int bad = 0;
    for (int o = 0; o < n_orders && orders[o] <= max_order; o++) {
        const int n = orders[o];
        for (int i = 0; i < n; i++) {
            A[(size_t)i * n + i] = 0;
            for (int j = i + 1; j < n; j++) {
                const double b = 2 * psf_rng_uniform(&rng) - 1, c = 2 * psf_rng_uniform(&rng) - 1;
                A[(size_t)i * n + j] = b - c;
                A[(size_t)j * n + i] = c - b;
            }
        }
        int sp = 0, sd = 0;
        const double lpf = psf_logpfaffian(n, A, work, &sp), ldet = psf_logdet(n, A, work, piv, &sd);
        const double mismatch = fabs(2 * lpf - ldet);
        if (sp == 0 || sd != 1 || !(mismatch <= 1e-8 * fmax(1.0, fabs(ldet)))) {
            fprintf(stderr, "pfaffian_speed: order %d: 2 log|Pf| = %.17g, log|det| = %.17g (signs %d, %d)\n", n,
                    2 * lpf, ldet, sp, sd);
            bad = 1;
        }
        /* calls per sample from the mean of 5 timed calls of the slower routine (LU) after one untimed, at least 1 */
        sample(1, n, 1, A, work, piv, &checksum);
        const double one = sample(1, n, 5, A, work, piv, &checksum);
        int R = one > 0 ? (int)(target_us * 1e-6 / one) : 1000;
        if (R < 1) R = 1;
        sample(0, n, R, A, work, piv, &checksum); /* warm-up */
        sample(1, n, R, A, work, piv, &checksum);
        for (int s = 0; s < samples; s++) {
            tp[s] = sample(0, n, R, A, work, piv, &checksum);
            tl[s] = sample(1, n, R, A, work, piv, &checksum);
        }
        const double mp = median(tp, samples), ml = median(tl, samples);
        printf("%6d %8d %14.1f %14.1f %10.2f %12.1e\n", n, R, 1e9 * mp, 1e9 * ml, ml / mp, mismatch);
        fflush(stdout);
    }
    checksum_sink = checksum;
    printf("checksum %.6g\n", checksum);
    free(A); free(work); free(piv); free(tp); free(tl);
    return bad;
}
