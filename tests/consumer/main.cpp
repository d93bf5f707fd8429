// main.cpp — a C++17 program using the installed psiformer.h. By default this translation unit also holds the
// implementation, compiled as C++; with -DCONSUMER_IMPL_IN_C it only includes the declarations (extern "C") and
// links with impl.c compiled as C.
#ifndef CONSUMER_IMPL_IN_C
#define PSIFORMER_IMPLEMENTATION
#endif
#include <psiformer.h>
#include "checks.h"

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

int main() {
    int failed = consumer_run("C++17");
    // the C API from C++ containers: the mean of a correlated series with its reblocked error bar
    std::vector<double> series(256);
    psf_rng rng;
    psf_rng_seed(&rng, 5, 0);
    for (double &v : series) v = -2.9 + 0.01 * psf_rng_normal(&rng);
    double mean = 0, err = 0;
    int block = 0;
    if (psf_reblock(series.data(), static_cast<int>(series.size()), &mean, &err, &block) != PSF_OK ||
        !(std::abs(mean + 2.9) < 0.01 && err > 0 && err < 0.01)) {
        std::printf("consumer: FAILED: psf_reblock from C++: %s (mean %g, error %g)\n", psf_last_error(), mean, err);
        failed++;
    }
    const std::string name = psf_optimizer_name(PSF_OPT_SPRING);
    if (name != "spring") { std::printf("consumer: FAILED: psf_optimizer_name\n"); failed++; }
    return failed ? 1 : 0;
}
