/* libFuzzer target: psf_molden_parse on arbitrary bytes (issue 10, item 2). It must return PSF_OK with a
 * consistent psf_molden, or an error code with a message and nothing allocated; never crash, leak or read out of
 * bounds. On success every basis function and, when the occupations make a determinant, every occupied orbital is
 * evaluated at one point (ASan checks the indices).
 *
 *   make fuzz                          builds and runs every target (FUZZ_SECONDS each)
 *   build/fuzz/fuzz_molden CORPUS_DIR  runs this one by hand                                           */
#define PSIFORMER_IMPLEMENTATION
#include "../../psiformer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    psf_molden mol;
    const int rc = psf_molden_parse(&mol, (const char *)data, size, "fuzz.molden");
    if (rc != PSF_OK) {
        if (mol.mo != NULL || mol.shells != NULL || mol.R != NULL || psf_last_error()[0] == 0) __builtin_trap();
        return 0;
    }
    if (mol.n_bf < 1 || mol.n_atoms < 1 || mol.n_mo < 1) __builtin_trap();
    const psf_real x[3] = {0.1, -0.2, 0.3};
    double *v = (double *)calloc((size_t)mol.n_bf, sizeof(double)), *g = (double *)calloc((size_t)mol.n_bf * 3, sizeof(double)),
           *l = (double *)calloc((size_t)mol.n_bf, sizeof(double));
    if (v && g && l) psf_molden_basis(&mol, x, v, g, l);
    psf_reference ref;
    psf_system sys;
    if (psf_molden_system(&mol, &sys) == PSF_OK && psf_reference_molden(&ref, &mol) == PSF_OK) {
        double ov[PSF_MAX_ELEC], og[3 * PSF_MAX_ELEC], ol[PSF_MAX_ELEC];
        for (int s = 0; s < 2; s++) {
            const int n = s ? ref.n_down : ref.n_up;
            if (ref.orbitals(&ref, s, x, n, ov, og, ol) != PSF_OK) __builtin_trap();
        }
    }
    free(v); free(g); free(l);
    psf_molden_free(&mol);
    return 0;
}
