/* peak.c — the machine's attainable floating-point rates, the denominators of "% of peak" in `make bench`:
 *
 *   1. FMA loop (always): independent chains of vector fused multiply-adds in registers, in double (fma64) and in
 *      float (fma32), at 1 and T threads (OpenMP). No memory traffic, so this is the core's multiply-add rate at
 *      the widest vectors the build targets (-march=native: AVX-512, else AVX2 + FMA; a plain-C build measures
 *      SSE2 multiplies and adds instead). The denominator for float32 kernels (SPRING's Gram product) and the
 *      honest one where a library's dgemm has no kernel for the CPU.
 *   2. dgemm (when built with -DPEAK_DGEMM and -lopenblas): a large cblas_dgemm from OpenBLAS, issue 4's "FP64
 *      peak" and issue 11's denominator for the jet pass. Debian's OpenBLAS 0.3.21 reaches only about half of the
 *      FMA loop on AMD Zen 5 (round 22, docs/results.md), so report.py prints the jet against both.
 *
 *   bench_peak [--n 2048] [--threads 1,2] [--budget SEC] [--csv FILE]
 *
 * Prints the CPU model and SIMD flags, then for each kind and thread count the fastest rate of the repetitions
 * that fit in the budget; appends `kind,threads,n,gflops,reps` rows to FILE (n: the dgemm order, or the FMA
 * loop's number of independent accumulators).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#ifdef PEAK_DGEMM
#include <cblas.h> /* OpenBLAS's: also declares openblas_set_num_threads */
#endif
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- the FMA loop -------------------------------------------------------------------------------------------
 * NACC accumulators x <- x m + a, each its own dependency chain: 12 chains cover an FMA latency of 4 cycles on two
 * pipes (8 in flight) with room to spare, and with m and a below they stay near 1 (no overflow, no denormals). */
enum { NACC = 12 };
#if defined(__AVX512F__)
#define PEAK_SIMD "AVX-512 FMA"
typedef __m512d vd;
typedef __m512 vf;
#define VD_SET _mm512_set1_pd
#define VD_FMA _mm512_fmadd_pd
#define VD_ADD _mm512_add_pd
#define VD_STORE _mm512_storeu_pd
#define VF_SET _mm512_set1_ps
#define VF_FMA _mm512_fmadd_ps
#define VF_ADD _mm512_add_ps
#define VF_STORE _mm512_storeu_ps
enum { LD = 8, LF = 16 };
#elif defined(__AVX2__) && defined(__FMA__)
#define PEAK_SIMD "AVX2 FMA"
typedef __m256d vd;
typedef __m256 vf;
#define VD_SET _mm256_set1_pd
#define VD_FMA _mm256_fmadd_pd
#define VD_ADD _mm256_add_pd
#define VD_STORE _mm256_storeu_pd
#define VF_SET _mm256_set1_ps
#define VF_FMA _mm256_fmadd_ps
#define VF_ADD _mm256_add_ps
#define VF_STORE _mm256_storeu_ps
enum { LD = 4, LF = 8 };
#else /* plain C: gcc's vector extension, a multiply and an add per element (2 flops, as an FMA counts) */
#define PEAK_SIMD "no FMA vectors (multiply + add)"
typedef double vd __attribute__((vector_size(16)));
typedef float vf __attribute__((vector_size(16)));
static vd VD_SET(double s) { return (vd){s, s}; }
static vd VD_FMA(vd x, vd m, vd a) { return x * m + a; }
static vd VD_ADD(vd x, vd y) { return x + y; }
static void VD_STORE(double *p, vd x) { memcpy(p, &x, sizeof x); }
static vf VF_SET(float s) { return (vf){s, s, s, s}; }
static vf VF_FMA(vf x, vf m, vf a) { return x * m + a; }
static vf VF_ADD(vf x, vf y) { return x + y; }
static void VF_STORE(float *p, vf x) { memcpy(p, &x, sizeof x); }
enum { LD = 2, LF = 4 };
#endif

/* iters x NACC vector FMAs in double; returns the sum of the accumulators (so none is dead code) */
static double fma_loop_d(long iters, double seed) {
    vd x[NACC];
    const vd m = VD_SET(0.999), a = VD_SET(0.001);
    for (int i = 0; i < NACC; i++) x[i] = VD_SET(seed + 0.01 * i);
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < NACC; i++) x[i] = VD_FMA(x[i], m, a);
    vd s = x[0];
    for (int i = 1; i < NACC; i++) s = VD_ADD(s, x[i]);
    double out[LD], t = 0;
    VD_STORE(out, s);
    for (int l = 0; l < LD; l++) t += out[l];
    return t;
}

static double fma_loop_f(long iters, double seed) {
    vf x[NACC];
    const vf m = VF_SET(0.999f), a = VF_SET(0.001f);
    for (int i = 0; i < NACC; i++) x[i] = VF_SET((float)(seed + 0.01 * i));
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < NACC; i++) x[i] = VF_FMA(x[i], m, a);
    vf s = x[0];
    for (int i = 1; i < NACC; i++) s = VF_ADD(s, x[i]);
    float out[LF];
    double t = 0;
    VF_STORE(out, s);
    for (int l = 0; l < LF; l++) t += out[l];
    return t;
}

static volatile double sink; /* keeps the loops' results alive */

/* seconds for `threads` threads each running the loop `iters` times (one parallel region, wall clock) */
static double fma_time(int single, long iters, int threads) {
    double t0 = now(), total = 0;
#ifdef _OPENMP
#pragma omp parallel num_threads(threads) reduction(+ : total)
    {
        const double seed = 1.0 + 0.1 * omp_get_thread_num();
        total += single ? fma_loop_f(iters, seed) : fma_loop_d(iters, seed);
    }
#else
    (void)threads;
    total = single ? fma_loop_f(iters, 1.0) : fma_loop_d(iters, 1.0);
#endif
    const double dt = now() - t0;
    sink = total;
    return dt;
}

/* the fastest rate (GFLOP/s, all threads together) within the budget; *reps_out repetitions */
static double fma_peak(int single, int threads, double budget, int *reps_out) {
    long iters = 1L << 16;
    while (fma_time(single, iters, threads) < 0.05 && iters < (1L << 40)) iters *= 2; /* calibrate: >= 50 ms */
    const double flops = 2.0 * NACC * (single ? LF : LD) * (double)iters * threads;
    double best = 1e30, spent = 0;
    int reps = 0;
    do {
        const double dt = fma_time(single, iters, threads);
        spent += dt;
        if (dt < best) best = dt;
        reps++;
    } while (spent < budget && reps < 20);
    *reps_out = reps;
    return flops / best * 1e-9;
}

static int usage(void) {
    fprintf(stderr, "usage: bench_peak [--n N] [--threads 1,2] [--budget SEC] [--csv FILE]\n");
    return 2;
}

int main(int argc, char **argv) {
    int n = 2048;
    double budget = 1.5;
    const char *threads = "1,2", *csv_path = NULL;
    if (argc % 2 == 0) return usage();
    for (int a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "--n")) n = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--threads")) threads = argv[a + 1];
        else if (!strcmp(argv[a], "--budget")) budget = atof(argv[a + 1]);
        else if (!strcmp(argv[a], "--csv")) csv_path = argv[a + 1];
        else return usage();
    }
    if (n < 1) return usage();
    int tl[16], nt = 0; /* the thread counts of --threads, in order */
    for (const char *s = threads; s && *s && nt < 16;) {
        const int t = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
        if (t >= 1) tl[nt++] = t;
    }
    char model[256] = "unknown";
    int avx2 = 0, avx512 = 0, fma = 0;
    FILE *ci = fopen("/proc/cpuinfo", "r");
    if (ci) {
        char line[4096];
        while (fgets(line, sizeof line, ci)) {
            if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
                snprintf(model, sizeof model, "%s", strchr(line, ':') + 2);
                model[strcspn(model, "\n")] = 0;
            }
            if (!strncmp(line, "flags", 5)) {
                avx2 = strstr(line, " avx2") != NULL;
                avx512 = strstr(line, " avx512f") != NULL;
                fma = strstr(line, " fma") != NULL;
            }
        }
        fclose(ci);
    }
    printf("peak: %s; CPU SIMD: %s%s%s; this build: %s (%d FP64 / %d FP32 lanes)\n", model,
           avx512 ? "avx512f " : "", avx2 ? "avx2 " : "", fma ? "fma" : "", PEAK_SIMD, LD, LF);
    FILE *csv = NULL;
    if (csv_path) {
        csv = fopen(csv_path, "a+");
        if (!csv) { fprintf(stderr, "bench_peak: cannot open %s\n", csv_path); return 1; }
        fseek(csv, 0, SEEK_END);
        if (ftell(csv) == 0) fprintf(csv, "kind,threads,n,gflops,reps\n");
    }
    for (int single = 0; single < 2; single++) {
        for (int i = 0; i < nt; i++) {
            const int t = tl[i];
#ifndef _OPENMP
            if (t > 1) { printf("  FMA loop, %d threads: not measured (built without OpenMP)\n", t); continue; }
#endif
            int reps = 0;
            const double gf = fma_peak(single, t, budget, &reps);
            printf("  FMA loop, %s, %d thread%s: %.1f GFLOP/s (fastest of %d)\n", single ? "float32" : "float64", t,
                   t > 1 ? "s" : "", gf, reps);
            if (csv) fprintf(csv, "%s,%d,%d,%.6g,%d\n", single ? "fma32" : "fma64", t, (int)NACC, gf, reps);
        }
    }
#ifdef PEAK_DGEMM
    double *A = malloc(sizeof(double) * (size_t)n * n), *B = malloc(sizeof(double) * (size_t)n * n),
           *C = malloc(sizeof(double) * (size_t)n * n);
    if (!A || !B || !C) { fprintf(stderr, "bench_peak: out of memory\n"); return 1; }
    srand(1);
    for (size_t i = 0; i < (size_t)n * n; i++) { A[i] = rand() / (double)RAND_MAX - 0.5; B[i] = rand() / (double)RAND_MAX - 0.5; }
    for (int i = 0; i < nt; i++) {
        const int t = tl[i];
        openblas_set_num_threads(t);
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, A, n, B, n, 0.0, C, n); /* warm-up */
        double best = 1e30, spent = 0;
        int reps = 0;
        do {
            double t0 = now();
            cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0, A, n, B, n, 0.0, C, n);
            double dt = now() - t0;
            spent += dt;
            if (dt < best) best = dt;
            reps++;
        } while (spent < budget && reps < 20);
        const double gf = 2.0 * n * (double)n * n / best * 1e-9;
        printf("  OpenBLAS dgemm %dx%d, %d thread%s: %.1f GFLOP/s (fastest of %d)\n", n, n, t, t > 1 ? "s" : "", gf,
               reps);
        if (csv) fprintf(csv, "dgemm,%d,%d,%.6g,%d\n", t, n, gf, reps);
    }
    free(A); free(B); free(C);
#else
    printf("  (no OpenBLAS in this build: no dgemm rate)\n");
#endif
    if (csv) fclose(csv);
    return 0;
}
