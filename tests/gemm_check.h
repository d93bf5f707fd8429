/* gemm_check.h — the library's matrix product (psf_test_gemm, in psf_real: double, or float in the float build)
 * against a long double reference of the same inputs. Shared by test_psiformer.c (gemm_matches_long_double_reference,
 * the double build) and real_check.c --kernels (run in both builds by float_build_kernels_within_their_bounds).
 *
 * Every shape below, with and without each transpose, for beta = 0 (C holds NaN, which must not be read), 1 and
 * -0.5, with padded leading dimensions. Each element must lie within (K + 2) eps sum_k |alpha a_ik b_kj| +
 * eps |beta c_ij| of the reference (eps the machine epsilon of psf_real; the classical bound for a sum of K
 * products, Higham, Accuracy and Stability of Numerical Algorithms, §3.5), and C's padding beyond N is untouched.
 * Then the width invariance the tape's reproducibility rests on: the first n columns of a product are bitwise those
 * of the product of B's first n columns alone (narrow edges run a narrower micro-kernel; each element must still be
 * the same sum in the same order).
 * Include after psiformer.h with PSF_INTERNAL_TESTS defined. */
#ifndef GEMM_CHECK_H
#define GEMM_CHECK_H
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Returns the number of products that failed (a bound, or the padding); *worst = the largest error / bound,
 * *checked = the products computed; -1 if out of memory. */
static int gemm_check(double *worst, int *checked) {
    static const int shapes[][3] = {{1, 1, 1}, {7, 1, 300}, {1, 9, 5}, {6, 8, 128}, {7, 17, 129}, {13, 33, 257},
                                    {30, 64, 64}, {49, 16, 3}, {5, 5, 0}, {64, 40, 700},
                                    {161, 170, 160}}; /* the last is past PSF_CBLAS_MIN_MNK: OpenBLAS when built with it */
    const double eps = sizeof(psf_real) == sizeof(float) ? FLT_EPSILON : DBL_EPSILON;
    psf_rng r;
    psf_rng_seed(&r, 11, 0);
    int failed = 0;
    *worst = 0;
    *checked = 0;
    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++)
        for (int t = 0; t < 4; t++)
            for (int bi = 0; bi < 3; bi++) {
                const int ta = t & 1, tb = t >> 1, M = shapes[si][0], N = shapes[si][1], K = shapes[si][2];
                const int lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1; /* padded leading dims */
                const int ar = ta ? K : M, br = tb ? N : K;
                const double alpha = 1.25, beta = bi == 0 ? 0.0 : bi == 1 ? 1.0 : -0.5;
                psf_real *A = (psf_real *)malloc(sizeof(psf_real) * ((size_t)ar * lda + 1));
                psf_real *B = (psf_real *)malloc(sizeof(psf_real) * ((size_t)br * ldb + 1));
                psf_real *C = (psf_real *)malloc(sizeof(psf_real) * (size_t)M * ldc);
                psf_real *C0 = (psf_real *)malloc(sizeof(psf_real) * (size_t)M * ldc);
                if (!A || !B || !C || !C0) { free(A); free(B); free(C); free(C0); return -1; }
                for (int i = 0; i < ar * lda; i++) A[i] = (psf_real)psf_rng_normal(&r);
                for (int i = 0; i < br * ldb; i++) B[i] = (psf_real)psf_rng_normal(&r);
                for (int i = 0; i < M * ldc; i++) C[i] = C0[i] = (psf_real)(bi == 0 ? NAN : psf_rng_normal(&r));
                psf_test_gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                int bad = 0;
                for (int i = 0; i < M; i++)
                    for (int j = 0; j < N; j++) {
                        long double s = 0, sa = 0;
                        for (int k = 0; k < K; k++) {
                            const long double p = (long double)(ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k]) *
                                                  (tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j]);
                            s += p; sa += fabsl(p);
                        }
                        const double c0 = bi == 0 ? 0.0 : (double)C0[(size_t)i * ldc + j];
                        const double ref = (double)(alpha * s + beta * c0);
                        const double tol = (K + 2) * eps * (double)(fabs(alpha) * sa) + eps * fabs(beta * c0);
                        const double err = fabs((double)C[(size_t)i * ldc + j] - ref);
                        if (!(err <= tol)) bad = 1; /* also a NaN read from C when beta = 0 */
                        if (tol > 0 && err / tol > *worst) *worst = err / tol;
                    }
                for (int i = 0; i < M && bi != 0; i++)
                    if (memcmp(&C[(size_t)i * ldc + N], &C0[(size_t)i * ldc + N], sizeof(psf_real))) bad = 1;
                failed += bad;
                (*checked)++;
                free(A); free(B); free(C); free(C0);
            }
    enum { WM = 13, WN = 40, WK = 37 };
    static const int narrow[] = {2, 5, 6, 8, 9, 17, 24, 33}; /* N = 1 is a matrix-vector product: its own order */
    psf_real *A = (psf_real *)malloc(sizeof(psf_real) * WM * WK), *B = (psf_real *)malloc(sizeof(psf_real) * WN * WK);
    psf_real *C = (psf_real *)malloc(sizeof(psf_real) * WM * WN), *Cn = (psf_real *)malloc(sizeof(psf_real) * WM * WN);
    if (!A || !B || !C || !Cn) { free(A); free(B); free(C); free(Cn); return -1; }
    for (int i = 0; i < WM * WK; i++) A[i] = (psf_real)psf_rng_normal(&r);
    for (int i = 0; i < WN * WK; i++) B[i] = (psf_real)psf_rng_normal(&r);
    for (int t = 0; t < 4; t++) {
        const int ta = t & 1, tb = t >> 1, lda = ta ? WM : WK, ldb = tb ? WK : WN;
        psf_test_gemm(ta, tb, WM, WN, WK, 1.0, A, lda, B, ldb, 0.0, C, WN);
        for (size_t q = 0; q < sizeof narrow / sizeof narrow[0]; q++) {
            const int n = narrow[q];
            psf_test_gemm(ta, tb, WM, n, WK, 1.0, A, lda, B, ldb, 0.0, Cn, n);
            int bad = 0;
            for (int i = 0; i < WM; i++)
                if (memcmp(Cn + (size_t)i * n, C + (size_t)i * WN, sizeof(psf_real) * n)) bad = 1;
            failed += bad;
            (*checked)++;
        }
    }
    free(A); free(B); free(C); free(Cn);
    return failed;
}
#endif
