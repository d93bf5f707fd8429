/* libFuzzer target: psf_load_npy on arbitrary bytes (issue 12). It must return PSF_OK with a buffer of
 * shape[0] x shape[1] doubles, or an error code with a message; never crash, leak or read out of bounds.
 *
 *   make fuzz                       builds and runs every target (FUZZ_SECONDS each)
 *   build/fuzz/fuzz_npy CORPUS_DIR  runs this one by hand                                             */
#define PSIFORMER_IMPLEMENTATION
#include "../../psiformer.h"
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/psf_fuzz_npy_%d.npy", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data, 1, size, f);
    fclose(f);
    double *x = NULL;
    int shape[2] = {-1, -1};
    const int rc = psf_load_npy(path, &x, shape);
    if (rc == PSF_OK) {
        /* every element is readable (ASan checks the bounds) */
        volatile double sum = 0;
        for (size_t i = 0; i < (size_t)shape[0] * (size_t)shape[1]; i++) sum += x[i];
        PSF_FREE(x);
    } else if (x != NULL || psf_last_error()[0] == 0) {
        __builtin_trap(); /* an error must leave no buffer behind and must say why */
    }
    remove(path);
    return 0;
}
