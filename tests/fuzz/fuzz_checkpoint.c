/* libFuzzer target: psf_vmc_load on arbitrary bytes (issue 12). The first input byte picks the optimizer whose
 * driver loads the file ((byte >> 1) mod 3: adam, kfac, spring) and the mode (byte & 1):
 *   even: the rest is the file as it is (almost every mutation then fails the CRC-32 check);
 *   odd:  the rest is a payload, written followed by its valid CRC-32, so the parser behind the checksum
 *         (header fields, sizes, values, optimizer state) is exercised too.
 * The loader must return PSF_OK or an error with a message; never crash, leak or read out of bounds; and
 * after an error the parameters and walkers must be unchanged ("nothing was loaded").
 *
 *   make fuzz                              builds and runs every target (FUZZ_SECONDS each)
 *   build/fuzz/fuzz_checkpoint CORPUS_DIR  runs this one by hand
 *   build/fuzz/fuzz_checkpoint -psf_write_corpus=DIR   writes the seed checkpoints of tests/corpus/checkpoint */
#define PSIFORMER_IMPLEMENTATION
#include "../../psiformer.h"
#include <unistd.h>

static psf_model model;
static psf_vmc vmcs[PSF_OPT_COUNT]; /* one driver per optimizer: each reads its own optimizer state */
static psf_real *saved;

/* A tiny helium model (1 layer, 2 heads x 4, MLP 6, 1 determinant) and 2 walkers: cheap to load. */
static void setup(void) {
    psf_system sys;
    psf_system_atom(&sys, "He", -1);
    psf_config c;
    psf_config_default(&c);
    c.psiformer.n_layers = 1; c.psiformer.n_heads = 2; c.psiformer.head_dim = 4; c.psiformer.mlp_hidden = 6; c.n_dets = 1;
    if (psf_model_init(&model, &sys, &c, 1)) __builtin_trap();
    for (int o = 0; o < PSF_OPT_COUNT; o++) {
        psf_vmc_config vc;
        psf_vmc_config_default(&vc);
        vc.batch = 2; vc.burn_in = 2; vc.mcmc_steps = 1; vc.optimizer = (psf_optimizer)o; vc.seed = 1; vc.threads = 1;
        if (psf_vmc_init(&vmcs[o], &model, &vc)) __builtin_trap();
    }
    saved = (psf_real *)malloc(sizeof(psf_real) * model.n_params);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    setup();
    for (int i = 1; i < *argc; i++) /* -psf_write_corpus=DIR: one trained checkpoint per optimizer, both modes */
        if (!strncmp((*argv)[i], "-psf_write_corpus=", 18)) {
            const char *dir = (*argv)[i] + 18;
            for (int o = 0; o < PSF_OPT_COUNT; o++) {
                psf_step_stats st;
                for (int s = 0; s < 2; s++) psf_vmc_train_step(&vmcs[o], &st);
                char path[512], tmp[512];
                snprintf(tmp, sizeof tmp, "%s/.tmp.bin", dir);
                if (psf_vmc_save(&vmcs[o], tmp)) { fprintf(stderr, "%s\n", psf_last_error()); exit(1); }
                FILE *f = fopen(tmp, "rb");
                fseek(f, 0, SEEK_END);
                const long n = ftell(f);
                fseek(f, 0, SEEK_SET);
                unsigned char *buf = (unsigned char *)malloc((size_t)n);
                if (fread(buf, 1, (size_t)n, f) != (size_t)n) exit(1);
                fclose(f);
                remove(tmp);
                for (int mode = 0; mode < 2; mode++) { /* mode 1 drops the CRC: the harness appends it */
                    snprintf(path, sizeof path, "%s/%s_%s.bin", dir, psf_optimizer_name(o), mode ? "payload" : "file");
                    FILE *g = fopen(path, "wb");
                    const unsigned char m = (unsigned char)(mode | o << 1); /* bit 0: CRC appended; bits 1-: optimizer */
                    fwrite(&m, 1, 1, g);
                    fwrite(buf, 1, (size_t)(mode ? n - 4 : n), g);
                    fclose(g);
                }
                free(buf);
            }
            exit(0);
        }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    char path[64];
    snprintf(path, sizeof path, "/tmp/psf_fuzz_ckpt_%d.bin", (int)getpid());
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fwrite(data + 1, 1, size - 1, f);
    if (data[0] & 1) {
        const uint32_t crc = psf__crc32(0, data + 1, size - 1);
        const unsigned char le[4] = {(unsigned char)crc, (unsigned char)(crc >> 8), (unsigned char)(crc >> 16), (unsigned char)(crc >> 24)};
        fwrite(le, 1, 4, f);
    }
    fclose(f);
    psf_vmc *v = &vmcs[(data[0] >> 1) % PSF_OPT_COUNT];
    memcpy(saved, model.params, sizeof(psf_real) * model.n_params);
    const int rc = psf_vmc_load(v, path);
    if (rc != PSF_OK) {
        if (psf_last_error()[0] == 0) __builtin_trap(); /* an error must say why */
        if (memcmp(saved, model.params, sizeof(psf_real) * model.n_params) != 0) __builtin_trap(); /* nothing loaded */
    }
    remove(path);
    return 0;
}
