/* peak.c — the machine's attainable FP64 rate, measured with a large cblas_dgemm from OpenBLAS (issue 4: the
 * denominator of "fraction of FP64 peak"). Linked with -lopenblas; the only bench binary that always is.
 *
 *   bench_peak [--n 2048] [--threads 1,2] [--budget SEC] [--csv FILE]
 *
 * For each thread count (openblas_set_num_threads): C = A B with n x n matrices, repeated within the budget;
 * prints and appends the fastest rate, 2 n^3 / t. Also prints the CPU model and the SIMD flags that bound the
 * theoretical peak (FMA units per core are not visible in /proc/cpuinfo, so no theoretical number is derived).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c11 */
#include <cblas.h> /* OpenBLAS's: also declares openblas_set_num_threads */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    int n = 2048;
    double budget = 1.5;
    const char *threads = "1,2", *csv_path = NULL;
    for (int a = 1; a + 1 < argc; a += 2) {
        if (!strcmp(argv[a], "--n")) n = atoi(argv[a + 1]);
        else if (!strcmp(argv[a], "--threads")) threads = argv[a + 1];
        else if (!strcmp(argv[a], "--budget")) budget = atof(argv[a + 1]);
        else if (!strcmp(argv[a], "--csv")) csv_path = argv[a + 1];
        else { fprintf(stderr, "usage: bench_peak [--n N] [--threads 1,2] [--budget SEC] [--csv FILE]\n"); return 2; }
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
    printf("FP64 peak: %s; SIMD: %s%s%s (%d FP64 lanes per vector)\n", model, avx512 ? "avx512f " : "",
           avx2 ? "avx2 " : "", fma ? "fma" : "", avx512 ? 8 : avx2 ? 4 : 2);
    double *A = malloc(sizeof(double) * (size_t)n * n), *B = malloc(sizeof(double) * (size_t)n * n),
           *C = malloc(sizeof(double) * (size_t)n * n);
    if (!A || !B || !C) { fprintf(stderr, "bench_peak: out of memory\n"); return 1; }
    srand(1);
    for (size_t i = 0; i < (size_t)n * n; i++) { A[i] = rand() / (double)RAND_MAX - 0.5; B[i] = rand() / (double)RAND_MAX - 0.5; }
    FILE *csv = NULL;
    if (csv_path) {
        csv = fopen(csv_path, "a+");
        if (!csv) { fprintf(stderr, "bench_peak: cannot open %s\n", csv_path); return 1; }
        fseek(csv, 0, SEEK_END);
        if (ftell(csv) == 0) fprintf(csv, "threads,n,gflops,reps\n");
    }
    const char *s = threads;
    while (s && *s) {
        const int t = atoi(s);
        s = strchr(s, ',');
        if (s) s++;
        if (t < 1) continue;
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
        printf("  dgemm %dx%d, %d thread%s: %.1f GFLOP/s (fastest of %d)\n", n, n, t, t > 1 ? "s" : "", gf, reps);
        if (csv) fprintf(csv, "%d,%d,%.6g,%d\n", t, n, gf, reps);
    }
    if (csv) fclose(csv);
    free(A); free(B); free(C);
    return 0;
}
