/* libFuzzer target: psf_system_from_xyz_string on arbitrary bytes (issue 10). The bytes are the text itself
 * (not NUL-terminated: ASan catches a read past its end). Each input is parsed three ways: in ångström and in
 * bohr with the default spin, and with charge +1 and spin 0. Every call must either return PSF_OK with a system
 * the rest of the library can use (1..PSF_MAX_ATOMS atoms with finite positions and charges, 1..PSF_MAX_ELEC
 * electrons, a finite nuclear repulsion) or an error code with a message that names the input ("fuzz:...");
 * never crash, leak or read out of bounds.
 *
 *   make fuzz                       builds and runs every target (FUZZ_SECONDS each)
 *   build/fuzz/fuzz_xyz CORPUS_DIR  runs this one by hand                                             */
#define PSIFORMER_IMPLEMENTATION
#include "../../psiformer.h"

static void check(const uint8_t *data, size_t size, int units_bohr, int charge, int spin) {
    psf_system s;
    memset(&s, 0xA5, sizeof s); /* on failure it must stay untouched */
    psf_system before = s;
    const int rc = psf_system_from_xyz_string(&s, (const char *)data, size, "fuzz", units_bohr, charge, spin);
    if (rc != PSF_OK) {
        if (strncmp(psf_last_error(), "fuzz:", 5) != 0 || memcmp(&s, &before, sizeof s) != 0) __builtin_trap();
        return;
    }
    const int N = s.n_up + s.n_down;
    if (s.n_atoms < 1 || s.n_atoms > PSF_MAX_ATOMS || N < 1 || N > PSF_MAX_ELEC || s.n_down < 0 || s.n_up < s.n_down)
        __builtin_trap();
    for (int a = 0; a < s.n_atoms; a++) {
        if (!(s.Z[a] >= 1 && s.Z[a] <= 18)) __builtin_trap();
        for (int k = 0; k < 3; k++) if (!isfinite(s.R[a][k])) __builtin_trap();
    }
    if (!isfinite(psf_nuclear_repulsion(&s))) __builtin_trap();
    (void)psf_molecule_match(&s, 1e-3);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    check(data, size, 0, 0, -1);
    check(data, size, 1, 0, -1);
    check(data, size, 0, 1, 0);
    return 0;
}
