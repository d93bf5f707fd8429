/* psf_harness.h — a small single-header test harness with the vocabulary of greatest
 * (https://github.com/silentbicycle/greatest): TEST, SUITE, RUN_TEST, RUN_SUITE, ASSERT*, PASS, FAIL, SKIP,
 * GREATEST_MAIN_DEFS / GREATEST_MAIN_BEGIN / GREATEST_MAIN_END, and the -v / -t NAME / -s NAME / -h flags.
 * greatest itself is not packaged for this machine, so psiformer.h carries this subset. The last line printed is
 * "N passed, N failed" (", N skipped" when tests were skipped).
 *
 *   TEST my_test(void) { ASSERT_IN_RANGE(1.0, x, 1e-12); PASS(); }
 *   SUITE(my_suite) { RUN_TEST(my_test); }
 *   GREATEST_MAIN_DEFS();
 *   int main(int argc, char **argv) { GREATEST_MAIN_BEGIN(); RUN_SUITE(my_suite); GREATEST_MAIN_END(); }
 */
#ifndef PSF_HARNESS_H
#define PSF_HARNESS_H
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

typedef enum { GREATEST_TEST_RES_PASS = 0, GREATEST_TEST_RES_FAIL = -1, GREATEST_TEST_RES_SKIP = 1 } greatest_test_res;

typedef struct {
    int verbose;
    const char *test_filter, *suite_filter;
    const char *suite;
    int passed, failed, skipped;
    int suite_selected;
    const char *fail_file, *msg;
    int fail_line;
} greatest_run_info;

extern greatest_run_info greatest_info;

#define TEST static greatest_test_res
#define SUITE(NAME) void NAME(void)
#define SUITE_EXTERN(NAME) void NAME(void)

#define GREATEST_FAILm(MSG) do { greatest_info.fail_file = __FILE__; greatest_info.fail_line = __LINE__; \
        greatest_info.msg = (MSG); return GREATEST_TEST_RES_FAIL; } while (0)
#define FAILm(MSG) GREATEST_FAILm(MSG)
#define FAIL() GREATEST_FAILm(NULL)
#define PASS() return GREATEST_TEST_RES_PASS
#define SKIPm(MSG) do { greatest_info.msg = (MSG); return GREATEST_TEST_RES_SKIP; } while (0)
#define SKIP() SKIPm(NULL)
#define ASSERTm(MSG, COND) do { if (!(COND)) GREATEST_FAILm(MSG); } while (0)
#define ASSERT(COND) ASSERTm(#COND, COND)
#define ASSERT_FALSEm(MSG, COND) ASSERTm(MSG, !(COND))
#define ASSERT_FALSE(COND) ASSERTm("!(" #COND ")", !(COND))
#define ASSERT_EQm(MSG, EXP, GOT) ASSERTm(MSG, (EXP) == (GOT))
#define ASSERT_EQ(EXP, GOT) ASSERT_EQm(#EXP " == " #GOT, EXP, GOT)
#define ASSERT_STR_EQ(EXP, GOT) ASSERTm(#EXP " equals " #GOT, strcmp((EXP), (GOT)) == 0)
/* |EXP - GOT| <= TOL, printing both on failure. */
#define ASSERT_IN_RANGEm(MSG, EXP, GOT, TOL) do { double e_ = (double)(EXP), g_ = (double)(GOT), t_ = (double)(TOL); \
        if (!(fabs(e_ - g_) <= t_)) { fprintf(stderr, "    expected %.12g, got %.12g, |diff| %.3g > tol %.3g\n", \
        e_, g_, fabs(e_ - g_), t_); GREATEST_FAILm(MSG); } } while (0)
#define ASSERT_IN_RANGE(EXP, GOT, TOL) ASSERT_IN_RANGEm(#GOT " near " #EXP, EXP, GOT, TOL)
#define ASSERT_LT(A, B) ASSERTm(#A " < " #B, (A) < (B))
#define ASSERT_LTE(A, B) ASSERTm(#A " <= " #B, (A) <= (B))
#define ASSERT_GT(A, B) ASSERTm(#A " > " #B, (A) > (B))

#define RUN_TEST(FN) greatest_run_test(FN, #FN)
#define RUN_SUITE(FN) do { greatest_info.suite = #FN; \
        greatest_info.suite_selected = !greatest_info.suite_filter || strstr(#FN, greatest_info.suite_filter) != NULL; \
        if (greatest_info.suite_selected) { if (greatest_info.verbose) printf("* Suite %s:\n", #FN); FN(); } } while (0)

static void greatest_run_test(greatest_test_res (*fn)(void), const char *name) {
    if (!greatest_info.suite_selected) return;
    if (greatest_info.test_filter && !strstr(name, greatest_info.test_filter)) return;
    greatest_info.msg = NULL;
    clock_t t0 = clock();
    greatest_test_res r = fn();
    double secs = (double)(clock() - t0) / CLOCKS_PER_SEC;
    if (r == GREATEST_TEST_RES_PASS) {
        greatest_info.passed++;
        if (greatest_info.verbose) printf("  PASS %s (%.2f s cpu)\n", name, secs); else { putchar('.'); fflush(stdout); }
    } else if (r == GREATEST_TEST_RES_SKIP) {
        greatest_info.skipped++;
        printf("%s  SKIP %s: %s\n", greatest_info.verbose ? "" : "\n", name, greatest_info.msg ? greatest_info.msg : "");
    } else {
        greatest_info.failed++;
        printf("%s  FAIL %s: %s (%s:%d)\n", greatest_info.verbose ? "" : "\n", name,
               greatest_info.msg ? greatest_info.msg : "", greatest_info.fail_file, greatest_info.fail_line);
    }
}

#define GREATEST_MAIN_DEFS() greatest_run_info greatest_info
#define GREATEST_MAIN_BEGIN() do { memset(&greatest_info, 0, sizeof greatest_info); greatest_info.suite_selected = 1; \
        for (int a_ = 1; a_ < argc; a_++) { \
            if (!strcmp(argv[a_], "-v")) greatest_info.verbose = 1; \
            else if (!strcmp(argv[a_], "-t") && a_ + 1 < argc) greatest_info.test_filter = argv[++a_]; \
            else if (!strcmp(argv[a_], "-s") && a_ + 1 < argc) greatest_info.suite_filter = argv[++a_]; \
            else if (!strcmp(argv[a_], "-h")) { printf("Usage: %s [-v] [-t TEST] [-s SUITE]\n", argv[0]); return 0; } \
            else { fprintf(stderr, "unknown argument '%s' (try -h)\n", argv[a_]); return 2; } } } while (0)
#define GREATEST_MAIN_END() do { \
        if (!greatest_info.verbose) putchar('\n'); \
        if (greatest_info.skipped) printf("%d passed, %d failed, %d skipped\n", greatest_info.passed, greatest_info.failed, greatest_info.skipped); \
        else printf("%d passed, %d failed\n", greatest_info.passed, greatest_info.failed); \
        return greatest_info.failed ? 1 : 0; } while (0)
#endif
