/* psiformer.h — neural-network wavefunctions for the many-electron Schrödinger equation, in one C header.
 *
 * ============================================================================================================
 *  OVERVIEW
 * ============================================================================================================
 * Variational Monte Carlo (VMC) with the Psiformer ansatz (von Glehn, Spencer, Pfau, "A Self-Attention Ansatz
 * for Ab-initio Quantum Chemistry", ICLR 2023, arXiv:2211.13672). Born–Oppenheimer Hamiltonian in atomic units:
 * lengths in bohr, energies in hartree (Ha).
 *
 *   Do this:
 *       #define PSIFORMER_IMPLEMENTATION
 *   before you include this file in *one* C file to create the implementation. Link with -lm (and -fopenmp to
 *   parallelise over walkers; without OpenMP everything still works, serially). C99 on POSIX systems, C11
 *   elsewhere; C++17 also compiles it. `make install` adds pkg-config and CMake files (README).
 *
 *   Configuration macros (define before the implementation include):
 *       PSF_MALLOC(n) / PSF_FREE(p)   allocator (default malloc/free)
 *       PSF_ASSERT(x)                 internal invariant check (default assert)
 *       PSF_USE_CBLAS                 dispatch the large dense matrix products (M N K >= PSF_CBLAS_MIN_MNK,
 *                                     default 2^22: SPRING's kernel, KFAC's factors) to cblas_dgemm (OpenBLAS);
 *                                     the tape's small products stay with the built-in kernel, which is faster
 *                                     there (measured: bench/). Results equal the built-in product up to rounding.
 *                                     It also factors SPRING's kernel and KFAC's factors of order > 64 with
 *                                     LAPACK's dpotrf (OpenBLAS contains LAPACK; link it with the BLAS)
 *       PSF_NO_LAPACK                 with PSF_USE_CBLAS, keep the built-in blocked Cholesky (a BLAS without LAPACK)
 *       PSF_USE_MPI                   split the walkers of psf_vmc over the ranks of an MPI communicator
 *                                     (psf_vmc_config.mpi_comm; include <mpi.h>, build with mpicc). Every
 *                                     reduction keeps the fixed chunk order, so 1 process and R ranks x T
 *                                     threads give the same bits (docs/scaling.md)
 *       PSF_WALKER_BLOCK              walkers whose forward passes the sampler evaluates together (default 8):
 *                                     each linear layer of the block is one (walkers x rows) x a by a x b
 *                                     product. The same bits as one walker at a time (the product's rows do
 *                                     not depend on how many there are); only the speed depends on it
 *       PSF_CHUNKS                    reduction chunks of the fixed tree over walkers (default 32): at most this
 *                                     many MPI ranks; C P reals of partial sums. Results depend on it (not on the
 *                                     thread or rank count)
 *       PSF_STATIC                    make every public function static (PSFDEF), so that two libraries can
 *                                     each carry a private copy of the implementation
 *       PSF_INTERNAL_TESTS            expose the named internal test API (psf_test_*) used by tests/ and bench/
 *
 * The wavefunction (Psiformer, per walker; N electrons, positions x in R^{N x 3}):
 *   features   h0_i   = [ log(1+|r_iI|), r_iI log(1+|r_iI|)/|r_iI|  for each nucleus I ] ++ [ spin_i = +-1 ]
 *   embedding  h_i    = h0_i W_e                                                   (no bias)
 *   L layers   h      = LN(h + Attn(h) W_o),  Attn = softmax(Q K^T / sqrt(d_head)) V per head (no biases)
 *              h      = LN(h + MLP(h)),       MLP  = tanh(tanh(h W_1 + b_1) W_2 + b_2)
 *   orbitals   phi^k_ij = (h_i W_orb^{s(i)})_{kN+j} * sum_I pi^{s(i)}_{I,kN+j} exp(-sigma^{s(i)}_{I,kN+j} |r_iI|)
 *   psi        = exp(J) * sum_k det[phi^k],   J = sum_{i<j} -c_ij a^2/(a + r_ij)  (c = 1/4 same spin, 1/2 not)
 *   or, with the Pfaffian head (cfg.orbitals = PSF_ORBITALS_PFAFFIAN; Gao & Günnemann, NeurIPS 2024):
 *              psi = exp(J) * sum_k Pf[M_k (W_k - W_k^T) M_k^T],  M_k the N x F enveloped orbital features
 *              (bordered by one more orbital column and row for odd N)
 * The network is an op *graph* (the tape): every op has three rules side by side — forward (values), jet
 * (value + gradient w.r.t. all 3N coordinates + Laplacian: the forward Laplacian of Li et al., Nat. Mach.
 * Intell. 6, 209 (2024)), and backward (vector-Jacobian product w.r.t. parameters and inputs). The ops are listed
 * once, in the registry PSF_OPS below; docs/architecture.md is the map of this file and has the recipes for
 * adding an op and an optimizer.
 *
 * Sections of this file (search for the banner):
 *   [API]              public types and declarations
 *   [IMPL: BASICS]     errors, RNG, timers, matrix products
 *   [IMPL: LINALG]     LU log-determinant, Pfaffian (Parlett–Reid), Cholesky
 *   [IMPL: TAPE]       one section per op (forward+jet, backward, scratch, sparsity), the rule table, passes
 *   [IMPL: ANSATZ]     systems (atoms, XYZ files, the molecule reference table), ansatz builders (Psiformer
 *                      trunk, determinant and Pfaffian heads, Jastrow), init
 *   [IMPL: HAMILTONIAN] potential and local energy
 *   [IMPL: REFERENCE]  Hartree–Fock orbitals of H..Ne (Slater-type tables), the reference determinant
 *   [IMPL: MOLDEN]     Molden files: the parser, contracted Gaussians, their occupied orbitals as a reference
 *   [IMPL: SAMPLER]    Metropolis–Hastings walkers
 *   [IMPL: STATISTICS] reblocking
 *   [IMPL: OPTIMIZERS] the optimizer interface; Adam, KFAC
 *   [IMPL: DRIVER]     VMC training / evaluation, checkpoints, .npy I/O
 *   [IMPL: TESTS]      the internal test API (PSF_INTERNAL_TESTS only)
 *
 * Embedding: the library never exits or prints, and checks its input instead of asserting on it (PSF_ASSERT
 * guards internal invariants only); every failure is a status code with its message in
 * psf_last_error(), which is thread-local (one buffer per thread; a compiler without C11 _Thread_local, C++
 * thread_local or GNU __thread gets one process-wide buffer). Everything else that is not a const query takes its
 * state as an argument: there is no other global state. Process-wide settings are changed in one place only,
 * psf_vmc_init, and only as documented there: omp_set_num_threads(cfg.threads) when cfg.threads > 0 (0, the
 * default, leaves the OpenMP thread count alone), and, when built with PSF_USE_CBLAS against OpenBLAS,
 * openblas_set_num_threads(1) (the library parallelises over walkers; a caller who needs another OpenBLAS
 * thread count sets it again after psf_vmc_init). Allocation sizes are computed with overflow checks: a size
 * that does not fit in size_t fails with PSF_ERR_NOMEM instead of wrapping, networks whose shapes overflow the
 * int sizes of the tape are refused by psf_model_init (PSF_ERR_ARG), and psf_vmc_memory tells the bytes
 * psf_vmc_init will need before it allocates them (cfg.max_bytes makes psf_vmc_init refuse more).
 *
 * License: MIT (see LICENSE).
 */
#ifndef PSIFORMER_H
#define PSIFORMER_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#ifndef PSFDEF
#ifdef PSF_STATIC
#if defined(__GNUC__)
#define PSFDEF static __attribute__((unused))
#else
#define PSFDEF static
#endif
#else
#define PSFDEF extern
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ============================================================================================================
 *  [API]
 * ============================================================================================================ */

/* The library's version (semantic versioning: the major number changes when the API does). `make install` writes
 * it into the pkg-config and CMake package files. */
#define PSF_VERSION_MAJOR 0
#define PSF_VERSION_MINOR 1
#define PSF_VERSION_PATCH 0
#define PSF_VERSION "0.1.0"

/* The real type of coordinates, parameters and tape values: double (the default) or float (`make FLOAT=1`,
 * -DPSF_REAL=float; any other type fails a static assertion). With float, the network's forward, jet and backward
 * passes run in float32 (the float instantiation of the built-in product), as FermiNet trains, while the optimizers' state,
 * the log-determinant's log-sums and traces, the local energy's sums and every reported statistic stay double.
 * A checkpoint records the real size and is restored only by a build with the same one. tests/real_check.c bounds
 * the float build against the double one; docs/results.md (round 12) measures its speed and energy. */
#ifndef PSF_REAL
#define PSF_REAL double
#endif
typedef PSF_REAL psf_real;

#define PSF_MAX_ATOMS 16
#define PSF_MAX_ELEC 64
#define PSF_MAX_DETS 64
/* psf_vmc_train_step fails after this many consecutive rejected (non-finite) updates */
#ifndef PSF_MAX_REJECTED
#define PSF_MAX_REJECTED 10
#endif

/* Status codes. Every function that can fail returns one; psf_last_error() holds the message. */
enum {
    PSF_OK = 0,
    PSF_ERR_ARG = 1,     /* invalid argument or configuration */
    PSF_ERR_NOMEM = 2,   /* allocation failed */
    PSF_ERR_IO = 3,      /* file could not be opened / read / written */
    PSF_ERR_FORMAT = 4,  /* file has the wrong magic, version or shape */
    PSF_ERR_NUMERIC = 5, /* non-finite values where finite ones are required */
    PSF_ERR_MPI = 6      /* an MPI call failed (PSF_USE_MPI builds) */
};

/* The message of the most recent failure in the calling thread (thread-local; empty string if none). */
PSFDEF const char *psf_last_error(void);

/* ---- Systems ------------------------------------------------------------------------------------------- */

/* Nuclei (positions in bohr, charges in units of e) and electrons by spin. Electrons 0..n_up-1 are spin up. */
typedef struct {
    int n_atoms;
    double R[PSF_MAX_ATOMS][3]; /* bohr */
    double Z[PSF_MAX_ATOMS];
    int n_up, n_down;
} psf_system;

/* Facts about a neutral first-row atom (H..Ne), ground state. Energies in hartree.
 * Sources: exact = Chakravorty, Gwaltney, Davidson, Parpia, Fischer, PRA 47, 3649 (1993) (He: Hylleraas-type);
 * hf_limit = numerical Hartree–Fock limit (Clementi & Roetti; Bunge et al.); see docs/method.md. */
typedef struct {
    const char *symbol;
    int Z, n_up, n_down;
    const char *term;
    double exact, hf_limit;
} psf_atom_info;

/* Look up an atom by symbol ("C"); NULL if unknown (no error is set). */
PSFDEF const psf_atom_info *psf_atom_lookup(const char *symbol);

/* A single atom at the origin. spin = n_up - n_down; pass -1 for the ground-state spin from the table.
 * Errors: PSF_ERR_ARG for an unknown symbol or a spin of the wrong parity / out of range. */
PSFDEF int psf_system_atom(psf_system *sys, const char *symbol, int spin);

/* Nuclear repulsion sum_{I<J} Z_I Z_J / |R_I - R_J| (hartree). Cannot fail. */
PSFDEF double psf_nuclear_repulsion(const psf_system *sys);

/* The bohr radius in ångström (CODATA 2018): 1 Å = 1 / PSF_BOHR_ANGSTROM bohr. */
#define PSF_BOHR_ANGSTROM 0.529177210903

/* A molecule from standard XYZ text: line 1 the atom count, line 2 a comment (ignored), then one line
 * `Symbol x y z` per atom (symbols H..Ar, any letter case; coordinates in ångström, or in bohr if units_bohr;
 * each within ±1000 units); blank lines may follow, nothing else (one frame only). CRLF line ends are accepted.
 * The nuclei keep the file's positions, converted to bohr; Z is the element's nuclear charge (units of e).
 * Electrons: N = sum Z - charge, n_up - n_down = spin (spin = -1: the lowest, N mod 2), n_up = (N + spin) / 2.
 * text[len] need not be NUL-terminated; name labels the messages ("name:line: what was expected").
 * Errors: PSF_ERR_FORMAT for a malformed file (the line and what was expected), more than PSF_MAX_ATOMS atoms, or
 * two nuclei closer than 1e-6 bohr; PSF_ERR_ARG for a charge leaving fewer than 1 or more than PSF_MAX_ELEC
 * electrons, or a spin that is negative (other than -1), larger than N, or of the wrong parity (an odd N cannot
 * have spin 0). sys is written only on success. */
PSFDEF int psf_system_from_xyz_string(psf_system *sys, const char *text, size_t len, const char *name, int units_bohr,
                                      int charge, int spin);

/* The same, read from the file at path (at most 1 MiB; the messages name the path). Errors: those above, and
 * PSF_ERR_IO if the file cannot be read. */
PSFDEF int psf_system_from_xyz(psf_system *sys, const char *path, int units_bohr, int charge, int spin);

/* Reference energies of small molecules (Born–Oppenheimer, non-relativistic, hartree) at standard geometries
 * (bohr), for the error of a run. Sources per row in `source`; docs/method.md lists them. */
typedef struct {
    const char *name;
    int n_atoms, charge, spin;
    int Z[4];
    double R[4][3];     /* bohr                                                              */
    double energy;      /* exact or estimated exact (hartree)                                */
    const char *source;
} psf_molecule_info;

/* The table's rows: *count receives their number. Cannot fail. */
PSFDEF const psf_molecule_info *psf_molecule_table(int *count);

/* The row whose molecule sys is (same charges, the same n_up and n_down, and every interatomic distance, sorted
 * with its pair of charges, within tol bohr: for the table's molecules of at most three atoms this fixes the
 * geometry up to rotation, translation and relabelling); NULL if none (no error is set). */
PSFDEF const psf_molecule_info *psf_molecule_match(const psf_system *sys, double tol);

/* ---- The tape: the op registry, graph, workspaces ------------------------------------------------------ */

/* The op registry (ggml-style): one row per op, X(ID, name). The enum psf_op, the name table and the rule table
 * of the implementation are generated from this one list. Each op's section in [IMPL: TAPE] defines
 * psf__<name>_fwd (forward, and the jet when asked), psf__<name>_bwd, psf__<name>_scratch and
 * psf__<name>_sparse (and, for the tests, psf__<name>_example). Shapes per walker; D = 3N.                   */
#define PSF_OPS(X)                                                                                             \
    X(INPUT, input)             /* electron coordinates x, N x 3 (flattened index d = 3 i + c)              */ \
    X(FEATURES, features)       /* one-electron features (log-rescaled r_iI, spin), N x (4 A + 1)           */ \
    X(LINEAR, linear)           /* Y = X W (+ b) per row; rows >= split use a second weight block (spin)    */ \
    X(ADD, add)                 /* Y = A + B                                                                */ \
    X(TANH, tanh)               /* Y = tanh(X)                                                              */ \
    X(LAYERNORM, layernorm)     /* per row: (x - mean) / sqrt(var + 1e-5) * scale + offset                  */ \
    X(ATTN_SCORES, attn_scores) /* S[h,i,j] = sum_c Q[i,h,c] K[j,h,c] / sqrt(d_head), (H N) x N            */ \
    X(SOFTMAX, softmax)         /* row-wise softmax                                                         */ \
    X(ATTN_MIX, attn_mix)       /* O[i,h,c] = sum_j P[h,i,j] V[j,h,c], N x (H d_head)                      */ \
    X(ENVELOPE, envelope)       /* M[k,i,o] = Phi[i,kF+o] * sum_I pi exp(-sigma |r_iI|), (K N) x F          */ \
    X(LOGDET, logdet)           /* log |sum_k det M_k| and its sign, scalar                                 */ \
    X(JASTROW, jastrow)         /* sum_{i<j} -c a^2 / (a + r_ij) (+ optional e-n cusp term), scalar         */ \
    X(PAIR, pair)               /* K skew pair matrices H_k (W_k - W_k^T) H_k^T (+ border), (K n) x n       */ \
    X(PAIRSUM, pairsum)         /* Z[i N + j] = U_i + V_j from [U V] (N x 2c), a pair MLP's layer, (N N) x c */ \
    X(SKEW, skew)               /* K pair matrices (nu_ij - nu_ji) e_k(i) e_k(j) (+ border), (K n) x n       */ \
    X(LOGPF, logpf)             /* log |sum_k Pf M_k| and its sign (K skew n x n, n even), scalar           */

typedef enum {
#define PSF__OP_ENUM(ID, name) PSF_OP_##ID,
    PSF_OPS(PSF__OP_ENUM)
#undef PSF__OP_ENUM
    PSF_OP_COUNT
} psf_op;

/* The op's name ("linear"), or "?" for a value outside the registry. */
PSFDEF const char *psf_op_name(int op);

typedef struct {
    psf_op op;
    int in0, in1;      /* input node indices (-1: none)                                        */
    int rows, cols;    /* value shape; size n = rows * cols                                     */
    int p_off, p_len;  /* parameter block in the flat buffer (-1 / 0: none)                     */
    int ia, ib, ic;    /* op-specific integers (see the op's rules)                             */
    int sparse;        /* 1: jet slice d is nonzero only in row d/3 (depends on electron d/3 only) */
    size_t off;        /* offset of this node's value (n reals) in a workspace's jet buffer      */
    size_t joff;       /* offset of its jet block ((3N+2) * n reals) there, shared with nodes whose jets
                          are no longer needed when it is computed (psf__layout)                 */
    size_t adj_off;    /* offset of this node's adjoint (n reals) in a workspace                */
} psf_node;

/* The kinds of parameter block, each with its initialisation (von Glehn et al. 2023 and the FermiNet reference
 * initialisation): X(ID, init) with init one of fanin (N(0,1)/sqrt(rows)), normal (N(0,1)), zero, one. */
#define PSF_PBLOCK_KINDS(X) \
    X(WEIGHT, fanin)        \
    X(WEIGHT_ZERO, zero)    \
    X(BIAS, normal)         \
    X(LN_SCALE, one)        \
    X(LN_OFFSET, zero)      \
    X(ENV_PI, one)          \
    X(ENV_SIGMA, one)       \
    X(JASTROW, one)
typedef enum {
#define PSF__PB_ENUM(ID, init) PSF_PB_##ID,
    PSF_PBLOCK_KINDS(PSF__PB_ENUM)
#undef PSF__PB_ENUM
    PSF_PB_COUNT
} psf_pblock_kind;

/* A named parameter block (llm.c-style flat buffer; row-major rows x cols). */
typedef struct {
    char name[40];
    int off, rows, cols;
    psf_pblock_kind kind;
    int node; /* the node that uses it */
} psf_pblock;

#define PSF_MAX_NODES 256
#define PSF_MAX_PBLOCKS 256

/* The per-electron network that produces the features h_i the orbital head reads (one builder per kind). */
typedef enum { PSF_ANSATZ_PSIFORMER = 0, PSF_ANSATZ_COUNT } psf_ansatz;
/* The orbital head: how the features become an antisymmetric function. DET: K full determinants of N orbitals
 * (FermiNet/Psiformer). PFAFFIAN: K Pfaffians of pair matrices Phi = M (W - W^T) M^T of F enveloped orbital
 * features M (N x F) per electron (Gao & Günnemann, NeurIPS 2024), bordered by one more orbital for odd N. */
typedef enum { PSF_ORBITALS_DET = 0, PSF_ORBITALS_PFAFFIAN = 1, PSF_ORBITALS_COUNT } psf_orbitals;
/* The Pfaffian head's pair function (issue 9). BILINEAR: Phi = M (W - W^T) M^T (Gao & Günnemann, NeurIPS 2024).
 * MLP: Phi_ij = (nu(h_i, h_j) - nu(h_j, h_i)) e(i) e(j), nu a two-layer tanh MLP on the pair with the spins of i
 * and j as inputs (through per-spin first-layer weights) and e an enveloped per-electron factor (Kim et al.,
 * Commun. Phys. 7, 148 (2024): phi(x_i, x_j) = nu(x_i, x_j) - nu(x_j, x_i)); its parameters do not depend on N.
 * BILINEAR_MLP: the sum of the two, the MLP term's output layer initialised to 0, so that the model starts as the
 * bilinear form (and contains the determinant as its special case) and is pretrained through its factors.
 * BILINEAR is the default: at equal wall time it is ahead of both MLP forms (docs/results.md, round 8). */
typedef enum { PSF_PAIR_BILINEAR = 0, PSF_PAIR_MLP = 1, PSF_PAIR_BILINEAR_MLP = 2, PSF_PAIR_COUNT } psf_pair_form;

/* Psiformer hyper-parameters (von Glehn et al. 2023, §3). */
typedef struct {
    int n_layers;      /* self-attention layers L (default 2)                 */
    int n_heads;       /* heads per layer H (default 4)                       */
    int head_dim;      /* d_head (default 16); model width = H * d_head      */
    int mlp_hidden;    /* hidden width of the MLP (default 64)                 */
    int use_layernorm; /* 1: LayerNorm after each residual (default 1)         */
} psf_psiformer_config;

/* The ansatz: trunk, orbital head, Jastrow. */
typedef struct {
    psf_ansatz ansatz;              /* default PSF_ANSATZ_PSIFORMER                                 */
    psf_psiformer_config psiformer; /* the trunk's hyper-parameters (when ansatz is the Psiformer)  */
    psf_orbitals orbitals;          /* default PSF_ORBITALS_DET                                     */
    int n_dets;                     /* determinants, or Pfaffians, K (default 4, at most PSF_MAX_DETS) */
    int pf_orbitals;                /* PFAFFIAN, bilinear forms: orbital features F per electron and
                                       Pfaffian, at least N rounded down to even (else Pf = 0) and at most
                                       1024; 0 (default) = 2N. F = N would give det(M) Pf(W - W^T)    */
    psf_pair_form pf_pair;          /* PFAFFIAN: the pair function (default PSF_PAIR_BILINEAR)          */
    int pf_hidden;                  /* PFAFFIAN, MLP forms: hidden width of nu, 1..1024 (0, default: 32) */
    int use_jastrow;                /* 1: simple e-e Jastrow (default 1)                            */
    int use_en_cusp;                /* 1: add the e-n cusp term sum_{i,I} -Z_I b_I r/(b_I + r) to the Jastrow
                                       (an extension, not in the Psiformer paper; default 0)          */
} psf_config;

/* Fills *cfg with the defaults above. Cannot fail. */
PSFDEF void psf_config_default(psf_config *cfg);

/* The ansatz: system + graph + flat parameters. */
typedef struct {
    psf_system sys;
    psf_config cfg;
    int n_elec, n_dim;          /* N and D = 3N                                           */
    int n_nodes;
    psf_node nodes[PSF_MAX_NODES];
    int out_node, logdet_node;  /* log|psi|; the orbital head's output (log|sum_k det| or log|sum_k Pf|) */
    int orbital_node;           /* DET: the K x N x N orbital matrices (pretraining target); PFAFFIAN: the
                                   K x n x n pair matrices                                 */
    int n_pblocks;
    psf_pblock pblocks[PSF_MAX_PBLOCKS];
    size_t n_params;
    psf_real *params;           /* [n_params]                                             */
    size_t ws_jet_reals;        /* workspace size: every node's value, then the live jet blocks */
    size_t ws_value_reals;      /* the first part of it: every node's value, one walker            */
    int ws_block;               /* walkers per block of psf_model_logpsi_block (PSF_WALKER_BLOCK, fewer when a
                                   block's product would leave the built-in kernel)               */
    size_t ws_adj_reals;        /* workspace size: all node adjoints                      */
    size_t ws_scratch_reals;    /* per-op scratch                                         */
    int too_large;              /* set while building when the graph outgrows its tables or a shape its int
                                   sizes; psf_model_init then refuses it (internal)              */
} psf_model;

/* Called by the LINEAR backward rule, when set in a workspace, with the node index, the layer input X
 * [rows x a] and the adjoint of its output dY [rows x b] (KFAC collects its Fisher factors this way). */
typedef void (*psf_linear_observer)(void *ctx, int node, const psf_node *nd, const psf_real *X, const psf_real *dY);

/* Per-thread scratch for evaluating one walker at a time, and a block of walkers' forward passes. */
typedef struct psf_workspace {
    psf_real *jet;     /* [ws_jet_reals]: node values, then (jet mode) the jet blocks by liveness           */
    psf_real *adj;     /* [ws_adj_reals]                                                                    */
    psf_real *scratch; /* [ws_scratch_reals]                                                                */
    int *iscratch;     /* [PSF_MAX_DETS * PSF_MAX_ELEC] pivots                                               */
    psf_real *dx;      /* [3N] adjoint w.r.t. coordinates from the last backward pass                       */
    int sign;          /* sign of psi from the last evaluation (0: psi = 0)                                 */
    int n_dim;         /* blocks currently valid: 0 after forward, D after jet                              */
    int jet_mode;      /* 1 while a jet pass runs and after it: node blocks are read at their jet offsets    */
    psf_linear_observer observe; /* optional (NULL): reports of the LINEAR backward rule                   */
    void *observe_ctx;
    /* psf_model_logpsi_block: the values of ws_block walkers stored node by node ([node][walker][rows x cols]),
     * and per walker a copy of the node table whose value offsets point into that walker's rows, and a view of
     * this workspace (its own sign, the shared scratch)                                                       */
    int block;                   /* ws_block of the model                                                   */
    psf_real *bval;              /* [ws_block * ws_value_reals]                                             */
    psf_node *bnodes;            /* [ws_block * n_nodes]                                                    */
    struct psf_workspace *bviews; /* [ws_block]                                                             */
} psf_workspace;

/* Builds the graph for sys/cfg (trunk, orbital head, Jastrow) and initialises its parameters from seed (the
 * PSF_PBLOCK_KINDS initialisations). Errors: PSF_ERR_ARG for an invalid system or configuration (the message
 * names the field), PSF_ERR_NOMEM. */
PSFDEF int psf_model_init(psf_model *m, const psf_system *sys, const psf_config *cfg, uint64_t seed);
PSFDEF void psf_model_free(psf_model *m);

/* Errors: PSF_ERR_NOMEM. */
PSFDEF int psf_workspace_init(psf_workspace *ws, const psf_model *m);
PSFDEF void psf_workspace_free(psf_workspace *ws);

/* log|psi(x)| for one walker, x: [N*3] bohr. *sign receives sign(psi) in {-1, 0, +1}. psi = 0 gives -INFINITY.
 * Cannot fail. */
PSFDEF double psf_model_logpsi(const psf_model *m, psf_workspace *ws, const psf_real *x, int *sign);

/* log|psi| of n walkers, x: [n][N*3] bohr, logpsi: [n], sign: [n] (each as psf_model_logpsi). The walkers go
 * through the graph together, ws->block at a time: node by node, every walker's rows of a linear layer form one
 * (walkers x rows) x a by a x b product (issue 11: one walker's 6 x 64 rows are too few to keep the kernel busy,
 * and helium's 2 x 64 fill a third of it), every other op runs per walker. The results are bit for bit those of
 * n calls of psf_model_logpsi, so the sampler's chains do not depend on the block. It leaves nothing for
 * psf_model_backward. Cannot fail. */
PSFDEF void psf_model_logpsi_block(const psf_model *m, psf_workspace *ws, int n, const psf_real *x, double *logpsi,
                                   int *sign);

/* Jet pass: log|psi|, grad[3N] = d log|psi| / dx (1/bohr), *lap = sum_d d^2 log|psi| / dx_d^2 (1/bohr^2).
 * grad and lap may be NULL. Returns log|psi| (-INFINITY where psi = 0). Cannot fail. */
PSFDEF double psf_model_jet(const psf_model *m, psf_workspace *ws, const psf_real *x, psf_real *grad,
                            psf_real *lap, int *sign);

/* Backward pass after psf_model_logpsi on the same x: dparams[p] += seed * d log|psi| / d theta_p, and
 * ws->dx[3N] = seed * d log|psi| / dx. dparams may be NULL (then only ws->dx). Cannot fail. */
PSFDEF void psf_model_backward(const psf_model *m, psf_workspace *ws, double seed, psf_real *dparams);

/* Evaluate the graph up to and including node k (used by the op tests and by pretraining). mode 0 = forward,
 * 1 = jet. Returns a pointer to the node's jet block in ws. Cannot fail. */
PSFDEF const psf_real *psf_model_eval_node(const psf_model *m, psf_workspace *ws, const psf_real *x, int k,
                                           int mode);

/* Backward pass from node k (after psf_model_eval_node(..., k, 0)) with adjoint adj [rows * cols] on its value:
 * dparams += adj . d y_k / d theta, ws->dx = adj . d y_k / d x. Cannot fail. */
PSFDEF void psf_model_backward_node(const psf_model *m, psf_workspace *ws, int k, const psf_real *adj,
                                    psf_real *dparams);

/* ---- Wavefunction interface (what the Hamiltonian and sampler see) ------------------------------------ */

/* Any wavefunction: the Psiformer, or an analytic trial function (used by tests and examples). */
typedef struct psf_wavefunction {
    int n_elec;
    void *ctx;
    /* log|psi| at x[3N]; *sign; ws is per-thread scratch made by ws_new (NULL for analytic functions). */
    double (*logpsi)(void *ctx, void *ws, const psf_real *x, int *sign);
    /* log|psi|, gradient [3N] and Laplacian of log|psi|. */
    double (*jet)(void *ctx, void *ws, const psf_real *x, psf_real *grad, psf_real *lap, int *sign);
    void *(*ws_new)(void *ctx);
    void (*ws_free)(void *ctx, void *ws);
    /* Optional (NULL: one logpsi call per walker): log|psi| and sign of n walkers x[n][3N] at once, with the
     * same bits as n logpsi calls (the sampler moves blocks of PSF_WALKER_BLOCK walkers through it). */
    void (*logpsi_block)(void *ctx, void *ws, int n, const psf_real *x, double *logpsi, int *sign);
} psf_wavefunction;

/* The Psiformer as a psf_wavefunction (ctx = the model). Cannot fail. */
PSFDEF psf_wavefunction psf_model_wavefunction(psf_model *m);

/* Analytic product of hydrogenic 1s orbitals, psi = exp(-zeta sum_i |r_i - R_0|) (nucleus 0). For one electron
 * with zeta = Z it is the exact hydrogen-like ground state; for He with zeta = 27/16 the variational optimum
 * of that form, E = -(27/16)^2 = -2.84765625 Ha (e.g. Szabo & Ostlund; Griffiths §7.2). Cannot fail. */
typedef struct { int n_elec; double zeta; double R0[3]; } psf_hydrogenic;
PSFDEF psf_wavefunction psf_hydrogenic_wavefunction(psf_hydrogenic *h);

/* ---- Linear algebra -------------------------------------------------------------------------------------- */

/* log|det M| of an n x n row-major matrix by LU with partial pivoting; *sign in {-1, 0, +1}; an exactly singular
 * matrix gives sign 0 and -INFINITY (never NaN). Scratch from the caller: lu [n*n] reals, piv [n] ints.
 * Cannot fail. */
PSFDEF double psf_logdet(int n, const psf_real *M, psf_real *lu, int *piv, int *sign);

/* log|Pf A| of a real skew-symmetric n x n row-major matrix A (n >= 0); *sign = sign(Pf A) in {-1, 0, +1}.
 * Only the strict upper triangle of A is read (A is taken to be exactly skew-symmetric). An odd n, or an exactly
 * singular A, gives sign 0 and -INFINITY (never NaN); n = 0 gives Pf = 1. Scratch from the caller: work [n*n] reals.
 * Cannot fail. Cost n^3/6 multiply-adds, half of psf_logdet's LU.
 * Method: skew-symmetric Parlett–Reid elimination with partial pivoting (M. Wimmer, "Algorithm 923: Efficient
 * numerical computation of the Pfaffian for dense and banded skew-symmetric matrices", ACM TOMS 38, 30 (2012):
 * the pivoted L T L^T decomposition, of which the Pfaffian needs only every second step). For k = 0, 2, 4, ...
 * the largest |A_kj|, j > k, is moved to A_{k,k+1} by swapping rows and columns k+1 and j together (each swap
 * flips the sign of Pf); then Pf A = A_{k,k+1} Pf S, where S (i, j > k+1) is the Schur complement of the 2 x 2
 * block, S_ij = A_ij + (A_{k+1,i} A_kj - A_ki A_{k+1,j}) / A_{k,k+1}; the pivoting keeps |A_kj / A_{k,k+1}| <= 1.
 * Derivatives (for the ops built on it; from Pf^2 = det), for skew-symmetric dA:
 *   d log|Pf A| = 1/2 tr(A^{-1} dA),   d^2 log|Pf A| = 1/2 [tr(A^{-1} d^2A) - tr(A^{-1} dA A^{-1} dA)]
 * (the second is the jet's Laplacian term). Backward: with respect to the independent entries A_ij, i < j,
 * d log|Pf A| / dA_ij = (A^{-1})_ji = -(A^{-1})_ij; written as a full matrix (A_ij and A_ji both moving) the
 * gradient is 1/2 A^{-T} = -1/2 A^{-1}, whose (i,j) and (j,i) entries add up to (A^{-1})_ji. */
PSFDEF double psf_logpfaffian(int n, const psf_real *A, psf_real *work, int *sign);

/* ---- Hamiltonian ---------------------------------------------------------------------------------------- */

typedef struct {
    double total;     /* E_L (hartree)                          */
    double kinetic;   /* -1/2 (lap log|psi| + |grad log|psi||^2) */
    double v_en, v_ee, v_nn;
} psf_eloc;

/* Potential energy V(x) of the Born–Oppenheimer Hamiltonian (hartree); parts optional (may be NULL).
 * Cannot fail. */
PSFDEF double psf_potential(const psf_system *sys, const psf_real *x, double *v_en, double *v_ee, double *v_nn);

/* Local energy E_L = -1/2 nabla^2 psi / psi + V = -1/2 (nabla^2 log|psi| + |nabla log|psi||^2) + V (hartree).
 * grad is scratch [3N]. out->total is NaN where psi = 0 at x (the only failure; no error message is set). */
PSFDEF void psf_local_energy(const psf_system *sys, const psf_wavefunction *wf, void *ws, const psf_real *x,
                             psf_real *grad, psf_eloc *out);

/* ---- Random numbers ------------------------------------------------------------------------------------- */

/* xoshiro256** stream; one per walker so that results do not depend on the number of threads. Cannot fail. */
typedef struct { uint64_t s[4]; } psf_rng;
PSFDEF void psf_rng_seed(psf_rng *r, uint64_t seed, uint64_t stream);
PSFDEF uint64_t psf_rng_next(psf_rng *r);
PSFDEF double psf_rng_uniform(psf_rng *r); /* (0, 1) */
PSFDEF double psf_rng_normal(psf_rng *r);  /* N(0, 1) */

/* ---- Sampler -------------------------------------------------------------------------------------------- */

/* A batch of walkers sampling |psi|^2 by Metropolis–Hastings with all-electron Gaussian moves. With scale_moves,
 * electron i's move has standard deviation width * h_i(x), h_i = min(d_i, 2 bohr) + 0.5 / Z_max, d_i the harmonic
 * mean of its distances to the nuclei (FermiNet's scale_by_nuclear_distance, bounded: an electron at a nucleus
 * still moves), with the asymmetric-proposal correction in the acceptance ratio; width is then dimensionless. */
typedef struct {
    int n_walkers, n_elec;
    psf_real *x;        /* [n_walkers * 3N] bohr                */
    double *logpsi;     /* [n_walkers]                          */
    int *sign;          /* [n_walkers]                          */
    psf_rng *rng;       /* [n_walkers]                          */
    double width;       /* proposal standard deviation (bohr), or its scale factor with scale_moves */
    int scale_moves;    /* 1: moves scaled by the distance to the nuclei (psf_walkers_init: 0)     */
    psf_system nuclei;  /* the nuclei the moves are scaled by (copied by psf_walkers_init)           */
    long n_accepted, n_proposed;
    int lo, hi;         /* psf_mcmc and psf_walkers_refresh move walkers lo..hi-1 only (psf_walkers_init:
                           0 and n_walkers; hi <= lo: all). psf_vmc sets its MPI rank's share          */
} psf_walkers;

/* Allocates walkers and places electrons around the nuclei (Gaussian of width 1 bohr around the nucleus each
 * electron is assigned to; electrons are assigned to atoms in proportion to their charges).
 * Errors: PSF_ERR_ARG (n_walkers < 1), PSF_ERR_NOMEM. */
PSFDEF int psf_walkers_init(psf_walkers *w, const psf_system *sys, int n_walkers, uint64_t seed);
PSFDEF void psf_walkers_free(psf_walkers *w);

/* Re-evaluates log|psi| of every walker it moves (w->lo..hi-1; all by default) (after a parameter change). ws: one per OpenMP thread (n_ws of them).
 * Errors: PSF_ERR_ARG if n_ws is smaller than the number of OpenMP threads. */
PSFDEF int psf_walkers_refresh(psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws);

/* n_steps Metropolis–Hastings sweeps of walkers w->lo..hi-1 (all by default); returns the acceptance fraction
 * (pmove) of these sweeps, or -1 with
 * PSF_ERR_ARG in psf_last_error() if n_ws is smaller than the number of OpenMP threads. */
PSFDEF double psf_mcmc(psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws, int n_steps);

/* Adapts the width toward acceptance in [0.50, 0.55] (multiplies/divides by 1.1), kept within [1e-3, 2] bohr.
 * Cannot fail. */
PSFDEF void psf_mcmc_adapt(psf_walkers *w, double pmove);

/* ---- Statistics ----------------------------------------------------------------------------------------- */

/* Flyvbjerg–Petersen reblocking (J. Chem. Phys. 91, 461 (1989)) of a correlated series x[n]: mean and its
 * standard error at the optimal block size (criterion B^3 > 2 n (s_B / s_0)^4: Lee, Conduit, Nemec, Lopez Rios,
 * Drummond, PRE 83, 066706 (2011)), among the blockings with at least 4 blocks. When no block size meets it
 * (the series is too short for its correlation time) the error bar is the largest over those blockings and
 * *block_size is negative (-B of that blocking): the error bar is then unreliable and callers should say so.
 * *block_size may be NULL. Errors: PSF_ERR_ARG if n < 2, PSF_ERR_NOMEM. */
PSFDEF int psf_reblock(const double *x, int n, double *mean, double *err, int *block_size);

/* ---- Optimizers and driver ------------------------------------------------------------------------------ */

/* The optimizers behind the one interface of [IMPL: OPTIMIZERS]. */
typedef enum { PSF_OPT_ADAM = 0, PSF_OPT_KFAC = 1, PSF_OPT_SPRING = 2, PSF_OPT_COUNT } psf_optimizer;

/* The optimizer's name ("adam", "kfac", "spring"), or "?" outside the enum. */
PSFDEF const char *psf_optimizer_name(int opt);

typedef struct {
    int batch;            /* walkers (default 256)                                                */
    int mcmc_steps;       /* Metropolis sweeps per iteration (default 10)                          */
    int burn_in;          /* sweeps before training (default 200)                                  */
    double mcmc_width;    /* initial proposal width, bohr (default 0.2)                            */
    psf_optimizer optimizer; /* default PSF_OPT_KFAC                                                  */
    double lr;            /* learning rate at t = 0; 0 (default) = the optimizer's: KFAC and SPRING 0.05,
                             Adam 3e-3                                                              */
    double lr_delay;      /* lr_t = lr / (1 + t / lr_delay) (default 1e4)                           */
    double adam_b1, adam_b2, adam_eps;  /* 0.9, 0.999, 1e-8                                           */
    double clip_scale;    /* E_L clipped at mean +- clip_scale * mean|E_L - mean| (default 5)     */
    /* KFAC (Martens & Grosse 2015) */
    double kfac_decay;    /* EMA decay of the Kronecker factors (default 0.95)                     */
    double kfac_damping;  /* Tikhonov damping lambda (default 1e-3)                                */
    double kfac_norm_constraint; /* bound on lr^2 * <update, gradient> (default 1e-3)              */
    int kfac_ferminet_scale; /* 1: FermiNet's conventions, Fisher 2 E[g g^T] and gradient E[(E_L - <E_L>) g]
                                (1/4 of the step before the constraint, 1/sqrt 2 when it binds); 0: Fisher
                                E[g g^T], gradient 2 E[(E_L - <E_L>) g] (default 1: measured better,
                                docs/results.md)                                                 */
    /* SPRING (Goldshlager, Abrahamsen, Lin, J. Comput. Phys. 2024, arXiv:2401.10190; defaults of its reference
     * code vmcnet) */
    double spring_mu;     /* decay of the previous direction mu (default 0.99)                     */
    double spring_damping; /* lambda of the B x B kernel (default 1e-3; raised tenfold, up to 8 times, in a
                              step whose kernel + lambda is not positive definite to working precision) */
    double spring_norm_constraint; /* bound on |step|^2 = |lr phi|^2 (default 1e-2; vmcnet's is 1e-3) */
    int spring_kernel_fp64; /* 0 (default): the B x B kernel Ō Ō^T from a float32 copy of Ō (twice the speed; each
                               entry within 130 u32 sum_k |Ō_ik Ō_jk| of the double one, u32 = 2^-24); 1: in
                               double precision throughout                                           */
    uint64_t seed;
    int threads;          /* 0: OpenMP default                                                     */
    double max_bytes;     /* psf_vmc_init refuses (PSF_ERR_NOMEM) a configuration for which psf_vmc_memory
                             exceeds this many bytes; 0 (default): no limit but what size_t can count.
                             The driver sets it to the machine's physical memory                   */
    const void *mpi_comm; /* PSF_USE_MPI builds: a pointer to the caller's MPI_Comm, whose ranks share the walkers
                             (each runs the chunks of the fixed reduction tree C r / R .. C (r+1) / R - 1, C the
                             chunk count, and gathers the others' before every reduction, so that the results
                             are bitwise those of one process). The caller owns MPI: MPI_Init before psf_vmc_init,
                             MPI_Finalize after psf_vmc_free; every rank makes the same calls with the same
                             configuration. NULL (default): this process alone. Ignored without PSF_USE_MPI  */
} psf_vmc_config;

/* Fills *c with the defaults above. Cannot fail. */
PSFDEF void psf_vmc_config_default(psf_vmc_config *c);

/* Per-iteration statistics. */
typedef struct {
    long step;
    double energy;    /* batch mean of E_L (hartree)             */
    double variance;  /* batch variance of E_L (hartree^2)       */
    double pmove;     /* acceptance fraction                     */
    double width;     /* proposal width (bohr)                   */
    int n_nonfinite;  /* walkers whose E_L was not finite when measured (before the reset below) */
    int n_reset;      /* walkers reset this step: log|psi| or E_L not finite, so the walker took the position
                         (and log|psi|, sign, E_L) of the next walker with finite values, cyclically; the
                         batch statistics are over the walkers after the reset */
    int restored;     /* 1: a parameter was not finite at the start of the step (only a caller can do that:
                         updates are rejected first); the parameters were restored to those after the last
                         accepted update (a non-finite optimizer state reset to zeros) before sampling */
    int skipped;      /* 1: the update was rejected (it made a parameter or the optimizer's state non-finite,
                         or the optimizer failed numerically); parameters and optimizer state are as before
                         the step and psf_last_error() says why */
    double step_size; /* learning rate used (KFAC: after the norm constraint) */
    double grad_norm; /* |energy gradient|                       */
    double t_sample, t_jet, t_backward, t_optimizer; /* seconds  */
} psf_step_stats;

typedef struct psf_vmc psf_vmc;
struct psf_vmc {
    psf_model *model;
    psf_vmc_config cfg;
    psf_wavefunction wf;
    psf_walkers walkers;
    int n_ws;
    psf_workspace *ws;   /* [n_ws]                                                    */
    void **wsp;          /* [n_ws] pointers into ws                                    */
    double *eloc;        /* [batch]                                                    */
    double *weight;      /* [batch] 2 (E~_b - <E~>) / B of the last gradient            */
    psf_real *grad;      /* [n_params] energy gradient                                 */
    psf_real *chunks;    /* [n_chunks * n_params]                                      */
    psf_real *gwalker;   /* [n_ws * n_params] per-walker grad log|psi| (per_walker optimizers) */
    int n_chunks;
    const void *opt;     /* the optimizer's rules (internal)                           */
    void *opt_state;     /* the optimizer's state (internal)                           */
    long step;
    int n_rejected;      /* consecutive rejected updates (psf_step_stats.skipped); not saved in checkpoints:
                            psf_vmc_load sets it to 0                                                        */
    double *backup;      /* [n_params + the optimizer's state] the state before the running update          */
    psf_real *good;      /* [n_params] the parameters after the last accepted update (valid if has_good)      */
    int has_good;        /* restores parameters a caller made non-finite between steps (psf_step_stats.restored) */
    double step_scale;   /* multiplies the learning rate and the bound on the step's norm (the norm
                            constraint becomes C step_scale^2) of the following steps: a caller's schedule,
                            e.g. the driver's --anneal. 1 after psf_vmc_init; not saved in checkpoints */
    int rank, n_ranks;   /* this process's rank and the rank count (0 and 1 without cfg.mpi_comm)           */
    int chunk_lo, chunk_hi; /* the reduction chunks this rank computes (all of them on one process)        */
    int *mpi_rows;       /* [4 n_ranks] each rank's first chunk and chunk count, first walker and walker count */
};

/* The bytes psf_vmc_init(v, m, cfg) will allocate (through PSF_MALLOC), computed without allocating: the walkers
 * (B x 3N coordinates, log|psi|, signs, RNG streams), one tape workspace per thread (node values with their jets,
 * adjoints, op scratch), the B local energies and weights, the gradient and its per-chunk partial sums, the
 * per-thread walker gradients (KFAC, SPRING), the optimizer's state (Adam: its two moments, 2 P reals; KFAC: the
 * Kronecker factors, their per-chunk sums and per-thread inversion work; SPRING: the B x P per-walker gradients
 * (2 B P floats: the rows and the panels of Ō; B P doubles with the fp64 kernel) and the B x B kernel) and the
 * copies that let a rejected update be undone (2 P reals + the optimizer's state). B = cfg->batch,
 * P = m->n_params, threads = cfg->threads if > 0 (with OpenMP), else the current OpenMP maximum (1 without OpenMP).
 * Not included: the model's own parameters (psf_model_init allocated them) and the temporaries of
 * psf_vmc_pretrain, psf_vmc_gap and psf_vmc_load. *bytes is SIZE_MAX when the total does not fit in
 * size_t. Errors: PSF_ERR_ARG (batch < 2, unknown optimizer); nothing else is checked. */
PSFDEF int psf_vmc_memory(const psf_model *m, const psf_vmc_config *cfg, size_t *bytes);

/* Allocates the driver for model m (which it does not own) and burns the walkers in. With cfg->threads > 0 it
 * calls omp_set_num_threads (a process-wide setting); with OpenBLAS it sets OpenBLAS to one thread (parallelism
 * is over walkers). Before allocating anything it refuses, with PSF_ERR_NOMEM and a message giving the bytes
 * needed, a configuration for which psf_vmc_memory is SIZE_MAX or above cfg->max_bytes (when > 0).
 * Errors: PSF_ERR_ARG (the message names the field), PSF_ERR_NOMEM. */
PSFDEF int psf_vmc_init(psf_vmc *v, psf_model *m, const psf_vmc_config *cfg);
PSFDEF void psf_vmc_free(psf_vmc *v);

/* One training iteration: MCMC, local energies, gradient 2 E[(E_L - <E_L>) grad_theta log|psi|] with clipped
 * E_L (FermiNet, Pfau et al. PRR 2, 033429 (2020), Eq. 4 and §"Optimization"), optimizer update.
 * Non-finite values (FermiNet's reset_if_nan, extended): a walker whose log|psi| or E_L is not finite is reset
 * to the next walker with finite values (st->n_reset); an update that would make a parameter or the optimizer's
 * state non-finite (or that the optimizer refuses numerically) is rejected: parameters and optimizer state are
 * restored bitwise to their values before the step (an optimizer state that was already non-finite is reset to
 * its initial zeros), st->skipped = 1, psf_last_error() says why, and PSF_OK is returned; the step still counts
 * (v->step advances). Errors: PSF_ERR_NUMERIC (no walker with a finite local energy; a parameter not finite
 * before the step; PSF_MAX_REJECTED consecutive rejected updates, with the parameters of the last good step
 * kept), PSF_ERR_ARG. */
PSFDEF int psf_vmc_train_step(psf_vmc *v, psf_step_stats *st);

/* One evaluation iteration with frozen parameters and a frozen proposal width: MCMC and local energies;
 * st->energy is the batch mean.
 * Errors: PSF_ERR_NUMERIC (no finite local energy), PSF_ERR_ARG. */
PSFDEF int psf_vmc_eval_step(psf_vmc *v, psf_step_stats *st);

/* The train/evaluation gap diagnostic: at the current parameters, the mean local energy of the walkers as they
 * are (*e_walkers) and of a copy of them after `sweeps` further Metropolis sweeps (*e_decorrelated), hartree.
 * The training walkers are not changed. A gap e_walkers - e_decorrelated well below 0 means the training walkers
 * sit where the optimizer has pushed the energy down (the bias a too-large step causes). Errors: PSF_ERR_NOMEM,
 * PSF_ERR_NUMERIC (no finite local energy). */
PSFDEF int psf_vmc_gap(psf_vmc *v, int sweeps, double *e_walkers, double *e_decorrelated);

/* Binary checkpoint, format version 3 (magic "PSFCKPT3"): system, ansatz kind and its hyper-parameters,
 * parameters, walkers, optimizer name and state, step, then a CRC-32 of everything before it. The file is
 * written to PATH.tmp, flushed to disk (fsync on POSIX systems), and renamed into place; an existing PATH is
 * first renamed to its ".prev" name (checkpoint.bin -> checkpoint.prev.bin), so a crash at any moment leaves
 * at least one complete checkpoint. A state with a non-finite parameter, walker coordinate, proposal width or
 * optimizer state is not written (PSF_ERR_NUMERIC naming it; an existing file is left as it was).
 * Errors: PSF_ERR_IO, PSF_ERR_NUMERIC. */
PSFDEF int psf_vmc_save(const psf_vmc *v, const char *path);
/* Restores a checkpoint into an initialised driver with the same system, ansatz and optimizer. The whole file
 * is checked (size, magic, version, CRC-32, header fields) before anything is loaded: a refused file changes
 * nothing. Errors: PSF_ERR_IO (cannot open), PSF_ERR_FORMAT naming the file and what is wrong: empty,
 * truncated, checksum mismatch, the field that does not match, an older or newer format.
 * Not in the file, so reset or kept by the caller: v->n_rejected, the count of consecutive rejected updates,
 * restarts at 0 (a run restored in the middle of a streak of rejected updates may take up to PSF_MAX_REJECTED
 * more before it stops; a rejected update leaves no other trace in the state, so the trajectory is the same);
 * v->step_scale is kept (the caller's schedule sets it before each step). */
PSFDEF int psf_vmc_load(psf_vmc *v, const char *path);

/* MPI (PSF_USE_MPI with cfg.mpi_comm; otherwise: rank 0 of 1, and psf_vmc_bcast does nothing). The ranks hold the
 * same parameters, optimizer state and walkers after every call above (the walkers each rank moved are gathered),
 * so any rank can report; psf_vmc_save writes on rank 0 only (the others return PSF_OK) and psf_vmc_load reads the
 * file on every rank, so a checkpoint written by P ranks restores on Q. A caller whose decisions depend on
 * something else that differs between ranks, such as the wall clock (a time budget), must take rank 0's value:
 * psf_vmc_bcast copies `bytes` bytes at buf from rank 0 to every rank. Errors: PSF_ERR_MPI. */
PSFDEF int psf_vmc_rank(const psf_vmc *v);
PSFDEF int psf_vmc_bcast(const psf_vmc *v, void *buf, size_t bytes);

/* NumPy .npy (format 1.0, little-endian float64, C order) writer and reader for 1- or 2-D arrays.
 * psf_load_npy fills shape[2] (shape[1] = 1 for 1-D) and allocates *data with PSF_MALLOC.
 * Errors: PSF_ERR_IO, PSF_ERR_FORMAT (naming the header field), PSF_ERR_NOMEM. */
PSFDEF int psf_save_npy(const char *path, const double *data, int rows, int cols);
PSFDEF int psf_load_npy(const char *path, double **data, int shape[2]);

/* ---- Reference orbitals and Hartree–Fock pretraining ------------------------------------------------------ */

/* The occupied orbitals of a reference determinant psi_ref = det[phi^up_j(x_i)] det[phi^down_j(x_i)] ("occupied
 * orbitals at points"): the pretraining target of the orbital head. A source of orbitals fills `orbitals`; the
 * built-in one is psf_reference_hf_atom. */
typedef struct psf_reference {
    int n_up, n_down;
    /* Orbitals 0..n-1 of spin channel `spin` (0 up, 1 down) at one electron position x[3] (bohr): val[n] and, when
     * not NULL, grad[3 n] (1/bohr, d/dx_c of orbital o at 3 o + c) and lap[n] (1/bohr^2). Returns PSF_OK or an
     * error code. */
    int (*orbitals)(const struct psf_reference *ref, int spin, const psf_real *x, int n, double *val, double *grad,
                    double *lap);
    void *ctx;         /* for a user's source                                   */
    int Z;             /* built-in atoms: the element and where its nucleus is  */
    double center[3];
} psf_reference;

/* The analytic restricted Hartree–Fock orbitals of a neutral first-row atom in its ground state (1s, 2s, 2p_x,
 * 2p_y, 2p_z filled in that order by spin-up, then spin-down electrons; for every atom H..Ne this determinant is a
 * pure state of the ground term). Near-HF-limit, nuclear-cusp-constrained Slater-type bases of T. Koga,
 * K. Kanayama, S. Watanabe, A. J. Thakkar, Int. J. Quantum Chem. 71, 491 (1999) (H: the exact 1s). *e_hf (may be
 * NULL) receives their tabulated total energy (hartree). Errors: PSF_ERR_ARG unless sys is one atom of H..Ne with
 * its ground-state spin. */
PSFDEF int psf_reference_hf_atom(psf_reference *ref, const psf_system *sys, double *e_hf);

/* psi_ref as a psf_wavefunction: log|psi_ref|, its gradient and Laplacian (Jacobi's formula per spin block), for
 * sampling |psi_ref|^2 and measuring its energy with psf_local_energy. ws_new returns NULL when out of memory. */
PSFDEF psf_wavefunction psf_reference_wavefunction(psf_reference *ref);

/* Hartree–Fock pretraining (FermiNet: Pfau et al., PRR 2, 033429 (2020), "Pretraining"; ferminet/pretrain.py).
 * `steps` Adam steps (learning rate lr, the Adam moments of cfg) on the loss
 *     L = mean over walkers, determinants k and matrix entries (i, j) of (M_k[i,j] - Phi_ref[i,j])^2,
 * with M_k the orbital head's N x N matrices (envelopes included) and Phi_ref block diagonal: the up block
 * phi^up_j(x_i), the down block phi^down_j(x_i), the off-spin blocks 0 (full determinants). Walkers sample
 * |psi_ref|^2 (FermiNet's default), cfg.mcmc_steps sweeps per step; afterwards they are re-equilibrated under the
 * network (cfg.burn_in sweeps). The Pfaffian head is pretrained toward the HF pair matrix (issue 9)
 * Phi_ref' J Phi_ref'^T, with J the symplectic unit (reference columns 2q, 2q+1 paired) over the first c = N - b
 * reference orbitals, bordered for odd N (b = 1) by the last one, whose Pfaffian is det Phi_ref. It gets there
 * through its factors: the first c x c block of every W_k is set so that W_k - W_k^T = J there (the rest of W_k
 * keeps its values), and the loss (normalised by N (F + b) instead of N^2) fits the enveloped features M_k
 * (N x (F + b)) to [Phi_ref', 0, last orbital]: the first c columns to the reference orbitals, the other F - c to
 * 0, the border column to the last orbital, so that M_k (W_k - W_k^T) M_k^T is the HF pair matrix. (Fitting the
 * pair matrices themselves, a quartic loss in the network's outputs, started carbon's training 4.8-5.7 Ha above
 * HF; docs/results.md, round 6.) The pair-MLP form (pf_pair = PSF_PAIR_MLP) has no such factors: its K pair
 * matrices (n x n, n = N + b) are fitted entrywise to that HF pair matrix (the loss normalised by n^2).
 * losses[steps] (may be NULL) receives L per step. The result is bitwise
 * independent of the thread count. Errors: PSF_ERR_ARG (reference and system differ, no orbital head),
 * PSF_ERR_NOMEM, PSF_ERR_NUMERIC (a non-finite loss). */
PSFDEF int psf_vmc_pretrain(psf_vmc *v, const psf_reference *ref, int steps, double lr, double *losses);

/* ---- Orbitals from Molden files ---------------------------------------------------------------------------- */

/* A Molden file (G. Schaftenaar, J. H. Noordik, J. Comput.-Aided Mol. Design 14, 123 (2000); the format:
 * https://www.theochem.ru.nl/molden/molden_format.html) read into memory: nuclei, contracted Gaussian basis and
 * molecular orbitals. Sections read: [Atoms] AU|Angs (also "(AU)", "(Angs)"; 1 angstrom = 1/0.529177210903 bohr,
 * CODATA 2018), [GTO] with s, p, d, f and sp shells (and the optional scale factor: exponents times its square),
 * the flags [5D] (5D and 7F), [5D7F], [5D10F], [7F] (7F; with no other flag 6D and 7F), [6D], [10F], [6D10F]
 * (cartesian otherwise; the flags apply in the file's order, so PySCF's "[5d] [7f]" is 5D and 7F; [9G] is accepted,
 * g shells are not), and [MO] with Sym=, Ene=, Spin= Alpha|Beta, Occup= and "index
 * coefficient" lines (indices not given are 0). Other sections ([Title], [Molden Format], [SCFCONV], ...) are
 * skipped. Numbers may use a Fortran D exponent.
 *
 * Basis functions (the conventions psi4's and PySCF's Molden writers use, checked against psi4's UHF energies in
 * `make molden-check`): a shell on nucleus A with exponents a_p and coefficients c_p ("for normalised
 * primitives") is chi(r) = R(|r - R_A|) P(r - R_A), R(r) = sum_p d_p exp(-a_p r^2), where the reader
 * normalises each primitive and then the contraction: d_p = c_p N_l(a_p) / sqrt(S), N_l(a)^2 =
 * 2^(l+2) (2a)^(l+1) sqrt(2a/pi) / (2l+1)!!, S = sum_pq c_p c_q (2 sqrt(a_p a_q)/(a_p + a_q))^(l+3/2), so that
 * int r^(2l) R^2 r^2 dr = 1. P is a real solid harmonic r^l Y_lm (Y normalised on the unit sphere) in the order
 * D0, D+1, D-1, D+2, D-2 / F0, F+1, F-1, F+2, F-2, F+3, F-3 (m > 0: cos(m phi), m < 0: sin(|m| phi), no
 * Condon-Shortley phase), or a cartesian monomial x^i y^j z^k times sqrt((2l+1) / (4 pi)) in the order xx, yy,
 * zz, xy, xz, yz / xxx, yyy, zzz, xyy, xxy, xxz, xzz, yzz, yyz, xyz; p: x, y, z. Every cartesian component of a
 * shell carries the factor that normalises x^l (Molden's convention, which psi4 writes: its 6-31G* orbitals are
 * orthonormal so, tests/data/ne_631gs_psi4.molden), so xx has norm 1 and xy norm 1/sqrt(3), xyy 1/sqrt(5), xyz
 * 1/sqrt(15); the spherical functions have norm 1.
 *
 * Occupations: with any Spin= Beta orbital the file is unrestricted and an orbital of either spin is occupied
 * when Occup= 1; otherwise (restricted) Occup= 2 occupies both spins and Occup= 1 the alpha (up) spin only. Other
 * occupations (natural orbitals) are read but refused by psf_molden_system and psf_reference_molden. */
typedef struct {
    int atom;       /* nucleus, 0-based index into R and Z                                       */
    int l;          /* 0..3 (s, p, d, f)                                                         */
    int pure;       /* 1: 2l+1 spherical functions, 0: (l+1)(l+2)/2 cartesian ones (from the flags) */
    int n_prim;     /* primitives: exps[p0 .. p0+n_prim-1]                                       */
    int p0;
    int bf0;        /* index of the shell's first basis function                                 */
} psf_molden_shell;

typedef struct {
    int n_atoms;
    double *R;              /* [n_atoms][3] nuclear positions, bohr                                   */
    double *Z;              /* [n_atoms] nuclear charges (the [Atoms] section's third column)          */
    int n_shells, n_prims, n_bf;
    psf_molden_shell *shells; /* [n_shells], in the file's order (an sp shell is an s and a p shell)     */
    double *exps;           /* [n_prims] exponents a_p, 1/bohr^2 (scale factor applied)                 */
    double *coefs;          /* [n_prims] contraction coefficients as written in the file                */
    double *norm;           /* [n_prims] d_p: primitive and contraction normalisation applied (above)   */
    int n_mo;
    double *mo;             /* [n_mo][n_bf] coefficients of orbital k over the basis functions          */
    double *energy;         /* [n_mo] Ene= (hartree; 0 if absent)                                       */
    double *occup;          /* [n_mo] Occup=                                                            */
    int *spin;              /* [n_mo] 0 alpha, 1 beta                                                   */
    int unrestricted;       /* 1 if any orbital has Spin= Beta                                          */
    int n_occ[2];           /* occupied orbitals of the up (alpha) and down (beta) spin                 */
    int *occ[2];            /* [n_occ[s]] their indices, in the file's order                            */
    int fractional;         /* index + 1 of the first orbital whose occupation is none of the above, or 0 */
} psf_molden;

/* Parses a Molden file held in memory (text[len], need not be NUL-terminated); `name` (the file name) prefixes
 * every message. On failure nothing is left allocated (*mol is zeroed) and psf_last_error() says
 * "name:line: what was expected, got 'the line'" (or "name: ..." for what spans lines: a missing section, an
 * orbital coefficient index beyond the basis). Errors: PSF_ERR_FORMAT, PSF_ERR_NOMEM. */
PSFDEF int psf_molden_parse(psf_molden *mol, const char *text, size_t len, const char *name);
/* psf_molden_parse of the file at `path`. Errors: also PSF_ERR_IO (cannot open or read it). */
PSFDEF int psf_molden_load(psf_molden *mol, const char *path);
/* Frees what psf_molden_parse allocated and zeroes *mol (a zeroed *mol is fine). */
PSFDEF void psf_molden_free(psf_molden *mol);

/* All n_bf basis functions at x[3] (bohr): val[n_bf] and, when not NULL, grad[3 n_bf] (1/bohr; d/dx_c of
 * function b at 3 b + c) and lap[n_bf] (1/bohr^2). Cannot fail. */
PSFDEF void psf_molden_basis(const psf_molden *mol, const psf_real *x, double *val, double *grad, double *lap);

/* The system a Molden file defines: its nuclei and n_up / n_down = its occupied alpha / beta orbitals.
 * Errors: PSF_ERR_ARG (more than PSF_MAX_ATOMS nuclei or PSF_MAX_ELEC electrons, a nucleus with Z < 1 (ghost
 * atom), a fractional occupation, no electrons). */
PSFDEF int psf_molden_system(const psf_molden *mol, psf_system *sys);

/* The occupied orbitals of a Molden file as a psf_reference (the pretraining target; psi_ref its UHF / RHF
 * determinant): ref->ctx = mol, which must outlive ref; spin 0 takes the occupied alpha orbitals, spin 1 the
 * beta ones, in the file's order. Errors: PSF_ERR_ARG (fractional occupations; more than PSF_MAX_ELEC). */
PSFDEF int psf_reference_molden(psf_reference *ref, const psf_molden *mol);

/* Wall-clock seconds (monotonic under OpenMP). Cannot fail. */
PSFDEF double psf_time(void);

#ifdef PSF_INTERNAL_TESTS
/* ---- The internal test API (tests/ and bench/ only; not a stable interface) ----------------------------- */
/* MCMC sweeps and local energies of all walkers, as the first half of psf_vmc_train_step. */
PSFDEF void psf_test_sample_and_measure(psf_vmc *v, psf_step_stats *st);
/* The energy gradient into v->grad (and the optimizer's per-walker statistics). Returns 0 on success. */
PSFDEF int psf_test_energy_gradient(psf_vmc *v, double mean);
/* The optimizer's update from v->grad; *step_size receives the step used. Returns PSF_OK or an error code. */
PSFDEF int psf_test_optimizer_update(psf_vmc *v, int n_walkers, double *step_size);
/* Array i (0, 1) of the optimizer's carried state (Adam: the moments m, v; KFAC: the running factors; SPRING:
 * the previous direction phi_prev), writable, its length *n (0: none) and the step counter (-1: none). */
PSFDEF double *psf_test_optimizer_state(psf_vmc *v, int i, size_t *n, long *counter);
/* In-place LU with partial pivoting (returns the sign, *logabs = log|det|) and the inverse from its factors. */
PSFDEF int psf_test_lu(int n, psf_real *a, int *piv, double *logabs);
PSFDEF void psf_test_lu_inverse(int n, const psf_real *lu, const int *piv, psf_real *inv);
/* SPRING's and KFAC's Cholesky factorisation A = L L^T (n x n, row-major, lower triangle = L; the strict upper
 * triangle is scratch afterwards). Returns 0, or 1 if A is not positive definite. */
PSFDEF int psf_test_cholesky(int n, double *a);
/* The Hartree-Fock reference matrix Phi_ref (N x N, block diagonal by spin) at one walker's coordinates x [3N];
 * val: N reals of scratch. Returns PSF_OK or the reference's error. */
PSFDEF int psf_test_reference_matrix(const psf_reference *ref, const psf_real *x, double *phi, double *val);
/* SPRING's float32 Gram product C = A B^T (A: m x K, B: n x K floats, row-major, put into the kernel's panels
 * here; C: m x n doubles). upper (A = B, m = n): only the panel pairs on and above the diagonal are computed, the
 * others left 0. Returns 0, or -1 when out of memory. */
PSFDEF int psf_test_gram_f32(int m, int n, size_t K, const float *A, const float *B, double *C, int upper);
/* The tape's elementwise exp and tanh: y[i] = exp(x[i]) / tanh(x[i]), i < n (y may equal x). */
PSFDEF void psf_test_vexp(const double *x, double *y, size_t n);
PSFDEF void psf_test_vtanh(const double *x, double *y, size_t n);
/* The matrix product C = alpha op(A) op(B) + beta C (cblas_dgemm semantics, row-major), as the tape uses it. */
PSFDEF void psf_test_gemm(int ta, int tb, int M, int N, int K, double alpha, const psf_real *A, int lda,
                          const psf_real *B, int ldb, double beta, psf_real *C, int ldc);
/* KFAC internals: the dense blocks and their running factors, the last step, the preconditioned gradient. */
typedef struct psf__kfac_dense psf_test_kfac_block; /* fields: see [IMPL: OPTIMIZERS] */
typedef struct {
    int n_dense;
    const psf_test_kfac_block *dense;  /* [n_dense]                                          */
    const double *ema;                 /* [stat_reals] running factors, then P diagonal terms */
    const unsigned char *is_dense;     /* [P]                                                 */
    size_t stat_reals, diag_off;
    double last_eta, last_q;           /* step size and <Delta, grad> of the last update      */
    const double *delta;               /* [P] the last preconditioned gradient                */
} psf_test_kfac_info;
/* Fills *out for a KFAC driver; returns 0 (and fills nothing) for another optimizer. */
PSFDEF int psf_test_kfac(const psf_vmc *v, psf_test_kfac_info *out);
/* SPRING internals after a gradient pass / an update: the per-walker gradients [B x P] (row b valid when
 * valid[b]), in double in G with the fp64 kernel, else rounded to float in Gf (the other NULL), and the last
 * direction phi [P]. Returns 0 for another optimizer. */
typedef struct { int B; size_t P; const double *G; const float *Gf; const unsigned char *valid; const double *phi;
                 double lambda_used; long n_raised; } psf_test_spring_info;
PSFDEF int psf_test_spring(const psf_vmc *v, psf_test_spring_info *out);
/* CRC-32 as the checkpoint writes it, and the byte offsets of a checkpoint's step and first parameter. */
PSFDEF uint32_t psf_test_crc32(const unsigned char *p, size_t n);
PSFDEF void psf_test_checkpoint_offsets(long *step, long *params);
/* Delta = (A + pi g I)^{-1} G (S + g/pi I)^{-1}, g = sqrt(lambda); work: rows^2 + cols^2. Returns pi or -1. */
PSFDEF double psf_test_kfac_precondition(int rows, int cols, const double *A, const double *S, double lambda,
                                         const psf_real *G, double *Delta, double *work);
/* log|Pf A| (psf_logpfaffian) together with inv = A^{-1} [n*n], exactly skew-symmetric; scratch work [n*n], perm [n].
 * inv is not written when *sign = 0. d log|Pf A| / dA_ij = inv[j*n + i] for i < j. */
PSFDEF double psf_test_pfaffian_inverse(int n, const psf_real *A, psf_real *work, int *perm, psf_real *inv, int *sign);
/* A model whose graph is a small example of op `op` (the op's own psf__<name>_example), for its FD test: the
 * last node is the op; parameters are initialised from seed. Errors as psf_model_init. */
PSFDEF int psf_test_op_model(psf_model *m, const psf_system *sys, int op, uint64_t seed);
/* The Pfaffian head's pretraining target tgt [n*n], n = N + (N mod 2), from a reference matrix phi [N*N]. */
PSFDEF void psf_test_reference_pair_matrix(int N, const double *phi, double *tgt);
PSFDEF int psf_test_max_threads(void);
PSFDEF int psf_test_thread_id(void);
#endif

#ifdef __cplusplus
}
#endif
#endif /* PSIFORMER_H */

/* ============================================================================================================
 *  IMPLEMENTATION
 * ============================================================================================================ */
#ifdef PSIFORMER_IMPLEMENTATION

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <limits.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif
/* psf_time without OpenMP: clock_gettime(CLOCK_MONOTONIC) where <time.h> declares it (POSIX, e.g. C11 with glibc's
 * defaults or -D_POSIX_C_SOURCE=200809L); else, on a POSIX system in strict C99 mode, gettimeofday; else C11's
 * timespec_get. So C99 suffices on POSIX systems and C11 elsewhere. */
#if !defined(_OPENMP) && defined(CLOCK_MONOTONIC)
#define PSF__CLOCK_MONOTONIC 1
#elif !defined(_OPENMP) && !defined(__cplusplus) && (!defined(__STDC_VERSION__) || __STDC_VERSION__ < 201112L) && \
    (defined(__unix__) || defined(__APPLE__))
#include <sys/time.h>
#define PSF__GETTIMEOFDAY 1
#endif
#ifndef PSF_MALLOC
#define PSF_MALLOC(n) malloc(n)
#define PSF_FREE(p) free(p)
#endif
#ifndef PSF_ASSERT
#include <assert.h>
#define PSF_ASSERT(x) assert(x)
#endif
#ifdef PSF_USE_CBLAS
#include <cblas.h>
#endif
#ifdef PSF_USE_MPI
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1 /* the C API only: MPI's deprecated C++ bindings are not needed (and not C-linkable) */
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>
#endif
#ifndef PSF_CBLAS_MIN_MNK
#define PSF_CBLAS_MIN_MNK 4194304.0 /* products with fewer multiply-adds run the built-in kernel */
#endif
#ifndef PSF_WALKER_BLOCK
#define PSF_WALKER_BLOCK 8 /* walkers per block of psf_model_logpsi_block (the sampler's forward passes) */
#endif
#if PSF_WALKER_BLOCK > 1
#define PSF__WALKER_BLOCK PSF_WALKER_BLOCK
#else
#define PSF__WALKER_BLOCK 1
#endif

/* ============================================================================================================
 *  [IMPL: BASICS] errors, time, random numbers, matrix products
 * ============================================================================================================ */

#ifdef __cplusplus
#define PSF__STATIC_ASSERT(c, msg) static_assert(c, msg)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define PSF__STATIC_ASSERT(c, msg) _Static_assert(c, msg)
#else /* C99: an array of negative size if c is false (one name per line: C99 forbids repeating a typedef) */
#define PSF__STATIC_ASSERT(c, msg) PSF__STATIC_ASSERT_AT(c, __LINE__)
#define PSF__STATIC_ASSERT_AT(c, line) PSF__STATIC_ASSERT_NAMED(c, line)
#define PSF__STATIC_ASSERT_NAMED(c, line) typedef char psf__static_assert_##line[(c) ? 1 : -1]
#endif

/* OpenMP directives as _Pragma (C99, C++11), emitted only when OpenMP is on: a build without -fopenmp then sees
 * no unknown pragma and compiles cleanly under -Wall (-Wunknown-pragmas). */
#ifdef _OPENMP
#define PSF__OMP(...) _Pragma(PSF__STR(omp __VA_ARGS__))
#define PSF__STR(...) #__VA_ARGS__
#else
#define PSF__OMP(...)
#endif
PSF__STATIC_ASSERT(sizeof(psf_real) == sizeof(double) || sizeof(psf_real) == sizeof(float),
                   "psiformer.h supports PSF_REAL double or float (see [API])");

/* The error message is thread-local (C11 _Thread_local, C++ thread_local, GNU __thread); a compiler with none of
 * these gets one process-global buffer. */
#if defined(__cplusplus)
#define PSF__TLS thread_local
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L && !defined(__STDC_NO_THREADS__)
#define PSF__TLS _Thread_local
#elif defined(__GNUC__)
#define PSF__TLS __thread
#else
#define PSF__TLS
#endif
static PSF__TLS char psf__errbuf[512];

#if defined(__GNUC__)
#define PSF__UNUSED __attribute__((unused))
#else
#define PSF__UNUSED
#endif

const char *psf_last_error(void) { return psf__errbuf; }

static int psf__fail(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(psf__errbuf, sizeof psf__errbuf, fmt, ap);
    va_end(ap);
    return code;
}

/* Allocation-size arithmetic saturates instead of wrapping: a product or sum that does not fit in size_t is
 * SIZE_MAX, which stays SIZE_MAX through further products and sums and which psf__calloc refuses. */
static size_t psf__mul(size_t a, size_t b) {
    if (a == 0 || b == 0) return 0;
    return a > SIZE_MAX / b ? SIZE_MAX : a * b;
}
static size_t psf__add(size_t a, size_t b) { return a > SIZE_MAX - b ? SIZE_MAX : a + b; }
/* The bytes psf__calloc(n, size) asks PSF_MALLOC for (SIZE_MAX: more than size_t can count). */
static size_t psf__alloc_bytes(size_t n, size_t size) {
    const size_t bytes = psf__mul(n, size);
    return bytes > 0 ? bytes : 1;
}
/* n zeroed elements of `size` bytes, or NULL when PSF_MALLOC fails or n * size overflows size_t. */
static void *psf__calloc(size_t n, size_t size) {
    const size_t bytes = psf__alloc_bytes(n, size);
    if (bytes == SIZE_MAX) return NULL;
    void *p = PSF_MALLOC(bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

double psf_time(void) {
#if defined(_OPENMP)
    return omp_get_wtime();
#elif defined(PSF__CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#elif defined(PSF__GETTIMEOFDAY)
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + 1e-6 * (double)tv.tv_usec;
#else
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#endif
}

#ifndef PSF_CHUNKS
#define PSF_CHUNKS 32 /* fixed reduction tree over walkers: results do not depend on the thread or rank count */
#endif
#define PSF__CHUNKS PSF_CHUNKS

static int psf__thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int psf__max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static uint64_t psf__splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* xoshiro256** (Blackman & Vigna 2018), seeded by splitmix64 from (seed, stream). */
void psf_rng_seed(psf_rng *r, uint64_t seed, uint64_t stream) {
    uint64_t s = seed ^ (0xD1B54A32D192ED03ULL * (stream + 1));
    for (int i = 0; i < 4; i++) r->s[i] = psf__splitmix64(&s);
}

static uint64_t psf__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

uint64_t psf_rng_next(psf_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = psf__rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = psf__rotl(s[3], 45);
    return result;
}

double psf_rng_uniform(psf_rng *r) { return ((double)(psf_rng_next(r) >> 11) + 0.5) * (1.0 / 9007199254740992.0); }

double psf_rng_normal(psf_rng *r) { /* Box–Muller; one value per call keeps streams simple */
    double u1 = psf_rng_uniform(r), u2 = psf_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* ---- Elementwise exp and tanh over arrays (the TANH op, the envelopes, the softmax). glibc's tanh goes through
 * a scalar expm1 and cost 20 % of a carbon training step (perf, Zen 4); these loops are branch-free, so that gcc
 * vectorises them at -O3 (8 lanes with AVX-512, 4 with AVX2).
 *   exp:   x = k ln2 + r, |r| <= ln2/2 (k = nearest integer to x / ln2, Cody-Waite reduction with ln2 in two
 *          parts); e^r - 1 = r + r^2 (1/2! + r/3! + ... + r^11/13!), truncated after r^13/13!: the rest is below
 *          5e-18 (0.05 ulp of e^x, < 0.1 ulp of e^r - 1);
 *          e^x = 2^k + 2^k (e^r - 1), with 2^k built from the exponent bits (as two factors, for subnormal
 *          results). Overflow (x > 709.78) gives inf, x < -745.13 gives 0, NaN stays NaN.
 *   tanh:  tanh|x| = u / (u + 2), u = expm1(2|x|) = 2^k - 1 + 2^k (e^r - 1), sign restored; tanh = +-1 for
 *          |x| >= 22 (1 - tanh 22 < 2^-60). No cancellation near 0: there u = e^r - 1 itself.
 * Measured maximum error against long-double references (4e7 arguments over the domain, Zen 4): exp 0.81 ulp
 * (0.83 without FMA; glibc 0.51), tanh 2.36 ulp (glibc 2.15); the test bounds them by 1 and 3 ulp. 1.2-1.5 ns
 * per element against glibc's 2.2 (tanh) and 6.1 (exp). Results depend on whether the target has FMA (psf__fma),
 * not on the thread count. */
#if defined(__FMA__) || defined(__AVX512F__)
#define psf__fma(a, b, c) fma(a, b, c)
#else
#define psf__fma(a, b, c) ((a) * (b) + (c))
#endif
static inline uint64_t psf__bits(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
static inline double psf__from_bits(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }
/* k = round(x / ln2) as a double, its low bits ki (k + 2^51 in the mantissa), and e^r - 1 for r = x - k ln2.
 * fdlibm's reduction: ln2_hi has 32 significant bits, so k ln2_hi and rh = x - k ln2_hi are exact with or
 * without FMA; r = rh - k ln2_lo is rounded once and its rounding error rc (~2^-55 |r|) is added back to first
 * order, e^(r+rc) - 1 = (e^r - 1) + rc (1 + r) + O(rc r^2). */
static inline double psf__expm1_reduced(double x, double *kd, uint64_t *ki) {
    const double shift = 0x1.8p52, ln2_hi = 0x1.62e42feep-1, ln2_lo = 0x1.a39ef35793c76p-33;
    double k = psf__fma(x, 0x1.71547652b82fep0, shift);
    *ki = psf__bits(k);
    k -= shift;
    *kd = k;
    const double rh = x - k * ln2_hi, rl = -k * ln2_lo, r = rh + rl, rc = (rh - r) + rl;
    double q = 1.0 / 6227020800.0;                       /* 1/13! */
    q = psf__fma(q, r, 1.0 / 479001600.0);               /* 1/12! */
    q = psf__fma(q, r, 1.0 / 39916800.0);
    q = psf__fma(q, r, 1.0 / 3628800.0);
    q = psf__fma(q, r, 1.0 / 362880.0);
    q = psf__fma(q, r, 1.0 / 40320.0);
    q = psf__fma(q, r, 1.0 / 5040.0);
    q = psf__fma(q, r, 1.0 / 720.0);
    q = psf__fma(q, r, 1.0 / 120.0);
    q = psf__fma(q, r, 1.0 / 24.0);
    q = psf__fma(q, r, 1.0 / 6.0);
    q = psf__fma(q, r, 0.5);
    return r + psf__fma(r * r, q, psf__fma(rc, r, rc));
}
/* y[i] = exp(x[i]), i < n (y may equal x) */
static void psf__vexpd(const double *x, double *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const double xi = x[i], xc = xi > 710.0 ? 710.0 : xi < -745.5 ? -745.5 : xi; /* NaN: xc = -745.5, fixed below */
        double kd;
        uint64_t ki;
        const double p = psf__expm1_reduced(xc, &kd, &ki);
        /* 2^k as 2^k1 2^k2 (k1 = floor(k/2), its bits by the same shift), so that a subnormal result is rounded
         * once */
        const uint64_t k1i = psf__bits((kd * 0.5 - 0.25) + 0x1.8p52); /* floor(k/2): k/2 - 1/4 rounded */
        const double s1 = psf__from_bits((k1i + 1023) << 52), s2 = psf__from_bits((ki - k1i + 1023) << 52);
        double e = psf__fma(s1, p, s1) * s2;
        e = xi > 709.782712893384 ? (double)INFINITY : e;
        e = xi < -745.1332191019412 ? 0.0 : e;
        y[i] = xi != xi ? xi : e;
    }
}
/* y[i] = tanh(x[i]), i < n (y may equal x) */
static void psf__vtanhd(const double *x, double *y, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const double xi = x[i], a = fabs(xi), ac = a < 22.0 ? a : 22.0;
        double kd;
        uint64_t ki;
        const double p = psf__expm1_reduced(2 * ac, &kd, &ki);
        const double s = psf__from_bits((ki + 1023) << 52); /* 2^k, 0 <= k <= 64 */
        const double u = psf__fma(s, p, s - 1.0);
        const double t = copysign(u / (u + 2.0), xi);
        y[i] = xi != xi ? xi : t;
    }
}

/* PSF__REAL_FLOAT: 1 when PSF_REAL is float (found by token pasting, so that it works in #if and in C99), else 0.
 * The float routines below are compiled only then; the names without a type letter (psf__gemm, psf__dot8,
 * psf__vexp, ...) are those for psf_real, the d-names are double whatever psf_real is. */
#define PSF__CAT_(a, b) a##b
#define PSF__CAT(a, b) PSF__CAT_(a, b)
#define PSF__IS_FLOAT_float 1
#if PSF__CAT(PSF__IS_FLOAT_, PSF_REAL)
#define PSF__REAL_FLOAT 1
#else
#define PSF__REAL_FLOAT 0
#endif

/* The same for float arrays (PSF_REAL float): through double in blocks of 64 and rounded once to float, so within
 * 0.5 ulp (float) + the double error above; compiled only when PSF_REAL is float. */
#define PSF__VFUNF_DEFINE(NAME, D)                                                                                 \
    static void NAME(const float *x, float *y, size_t n) {                                                         \
        double t[64];                                                                                              \
        for (size_t i0 = 0; i0 < n; i0 += 64) {                                                                    \
            const size_t m = n - i0 < 64 ? n - i0 : 64;                                                            \
            for (size_t i = 0; i < m; i++) t[i] = x[i0 + i];                                                       \
            D(t, t, m);                                                                                            \
            for (size_t i = 0; i < m; i++) y[i0 + i] = (float)t[i];                                                \
        }                                                                                                          \
    }
#if PSF__REAL_FLOAT
PSF__VFUNF_DEFINE(psf__vexp, psf__vexpd)
PSF__VFUNF_DEFINE(psf__vtanh, psf__vtanhd)
#else
#define psf__vexp psf__vexpd
#define psf__vtanh psf__vtanhd
#endif

/* The built-in matrix product: a register-blocked micro-kernel (MR x NR of C kept in registers while PSF__KC terms
 * of the inner dimension stream through), in the manner of Goto & van de Geijn, ACM TOMS 34, 12 (2008). It reads
 * whole MR-row slivers of A and rows of B in place (the tape's products are small: 6 x 64 by 64 x 64 for carbon,
 * where packing A and a tile buffer cost a fifth of the product); only ragged slivers of A, and B when transposed
 * or at a ragged edge, are packed, and a whole tile with alpha = 1 goes from the registers straight into C (the
 * others through a buffer, scaled by alpha). Either way each element is the same sum in the same order. It exists
 * for double (psf__dgemm: the optimizers, and the network by default) and for float (psf__gemm when PSF_REAL is
 * float; otherwise psf__gemm is psf__dgemm). The micro-kernels are
 * written with x86 intrinsics for AVX-512 and AVX2+FMA and in plain C otherwise; which one is compiled follows the
 * compiler's target flags (-march=native). Every element of C is summed over k in the same order whatever the
 * thread count (the product itself is serial: callers parallelise over walkers or tiles), so results are bitwise
 * reproducible across thread counts; they differ between instruction sets by rounding (FMA or not). */
/* A micro-kernel: the MR x NR tile sum_k a(i, k) b(k, j) over kc terms, with a(i, k) at a[i sai + k sak] (a packed
 * sliver: sai = 1, sak = MR; A read in place: its row and column strides) and b(k, j) at b[k ldb + j]; the tile is
 * stored to c (row stride ldc), or added to it when add is set. The x86 kernels keep MR rows of C in registers as
 * NV vectors V of L lanes each (NR = NV L); SET1 broadcasts a(i, k). Each product comes in two widths: NV = 2 (the
 * tile), and NV = 1 for a ragged edge of at most L columns (attention's 6-column products), which computes every
 * element with the same fused multiply-adds in the same order, so the bits do not depend on the width. */
/* PSF__PIN(x): x is in a register here (an empty asm that "changes" it). The kernel pins its row of B, so that gcc
 * cannot fold the loads into the multiply-adds instead: for SPRING's AVX2 Gram kernel gcc 12 did, 1.5 loads per
 * multiply-add where 0.75 suffice (docs/results.md, round 22). It emits nothing and changes no bits. */
#if defined(__GNUC__) && defined(__AVX512F__)
#define PSF__PIN(x) __asm__("" : "+v"(x))
#elif defined(__GNUC__)
#define PSF__PIN(x) __asm__("" : "+x"(x))
#else
#define PSF__PIN(x) (void)0
#endif
#define PSF__SIMD_KERNEL_DEFINE(NAME, T, MR, NV, L, V, ZERO, LOAD, SET1, FMA, ADD, STORE)                         \
    static void NAME(int kc, const T *a, size_t sai, size_t sak, const T *b, size_t ldb, T *c, size_t ldc,        \
                     int add) {                                                                                    \
        V r[MR][NV];                                                                                               \
        for (int i = 0; i < MR; i++)                                                                               \
            for (int v = 0; v < NV; v++) r[i][v] = ZERO();                                                         \
        for (int k = 0; k < kc; k++) {                                                                             \
            V bv[NV];                                                                                              \
            for (int v = 0; v < NV; v++) {                                                                         \
                bv[v] = LOAD(b + (size_t)k * ldb + v * L);                                                         \
                PSF__PIN(bv[v]);                                                                                   \
            }                                                                                                      \
            const T *ak = a + (size_t)k * sak;                                                                     \
            for (int i = 0; i < MR; i++) {                                                                         \
                const V av = SET1(ak[(size_t)i * sai]);                                                            \
                for (int v = 0; v < NV; v++) r[i][v] = FMA(av, bv[v], r[i][v]);                                   \
            }                                                                                                      \
        }                                                                                                          \
        for (int i = 0; i < MR; i++) {                                                                             \
            T *ci = c + (size_t)i * ldc;                                                                           \
            for (int v = 0; v < NV; v++) {                                                                         \
                if (add) r[i][v] = ADD(LOAD(ci + v * L), r[i][v]);                                                 \
                STORE(ci + v * L, r[i][v]);                                                                        \
            }                                                                                                      \
        }                                                                                                          \
    }
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#if defined(__AVX512F__)
#define PSF__DMR 6
#define PSF__DNR 16
#define PSF__VD __m512d
#define PSF__VS __m512
#define PSF__VOP(op) _mm512_##op
#else
#define PSF__DMR 6
#define PSF__DNR 8
#define PSF__VD __m256d
#define PSF__VS __m256
#define PSF__VOP(op) _mm256_##op
#endif
#define PSF__SMR PSF__DMR
#define PSF__SNR (2 * PSF__DNR) /* twice the lanes in float */
/* the two widths of one element type: S the intrinsics' suffix (pd, ps), NR the full tile's columns */
#define PSF__VKERNEL_DEFINE(NAME, T, MR, NR, V, S, NV)                                                             \
    PSF__SIMD_KERNEL_DEFINE(NAME, T, MR, NV, (NR / 2), V, PSF__VOP(setzero_##S), PSF__VOP(loadu_##S),               \
                            PSF__VOP(set1_##S), PSF__VOP(fmadd_##S), PSF__VOP(add_##S), PSF__VOP(storeu_##S))
PSF__VKERNEL_DEFINE(psf__dkernel, double, PSF__DMR, PSF__DNR, PSF__VD, pd, 2)
PSF__VKERNEL_DEFINE(psf__dkernel_half, double, PSF__DMR, PSF__DNR, PSF__VD, pd, 1)
#if PSF__REAL_FLOAT
PSF__VKERNEL_DEFINE(psf__skernel, float, PSF__SMR, PSF__SNR, PSF__VS, ps, 2)
PSF__VKERNEL_DEFINE(psf__skernel_half, float, PSF__SMR, PSF__SNR, PSF__VS, ps, 1)
#endif
#else
#define PSF__DMR 4
#define PSF__DNR 4
#define PSF__SMR 4
#define PSF__SNR 4
/* the plain-C micro-kernel for element type T */
#define PSF__KERNEL_DEFINE(NAME, T, MR, NR)                                                                        \
    static void NAME(int kc, const T *a, size_t sai, size_t sak, const T *b, size_t ldb, T *c, size_t ldc,        \
                     int add) {                                                                                    \
        T r[MR][NR];                                                                                               \
        for (int i = 0; i < MR; i++)                                                                               \
            for (int j = 0; j < NR; j++) r[i][j] = 0;                                                              \
        for (int k = 0; k < kc; k++)                                                                               \
            for (int i = 0; i < MR; i++)                                                                           \
                for (int j = 0; j < NR; j++) r[i][j] += a[(size_t)i * sai + (size_t)k * sak] * b[(size_t)k * ldb + j]; \
        for (int i = 0; i < MR; i++)                                                                               \
            for (int j = 0; j < NR; j++) c[(size_t)i * ldc + j] = add ? c[(size_t)i * ldc + j] + r[i][j] : r[i][j]; \
    }
PSF__KERNEL_DEFINE(psf__dkernel, double, PSF__DMR, PSF__DNR)
#define psf__dkernel_half psf__dkernel /* one width: the whole tile */
#if PSF__REAL_FLOAT
PSF__KERNEL_DEFINE(psf__skernel, float, PSF__SMR, PSF__SNR)
#define psf__skernel_half psf__skernel
#endif
#endif
enum { PSF__KC = 128 }; /* packed A (8 MR x KC) and B (KC x NR): at most 64 KB of stack per call */

/* psf__dot8: sum_k a[k] b[k sb], k < K, in eight partial sums of a fixed order when sb = 1 (vectorised; the same
 * bits whoever calls it: psf__gemm's matrix-vector path and SPRING's fused pass). The same sum in pieces: the lanes
 * s8 carried through psf__dot8_lanes over consecutive ranges of multiples of 8 terms, the last range's K % 8 terms
 * summed in order into s, then psf__dot8_sum(s8, s). Defined for element type T with the name prefix P: psf__ddot8*
 * in double always, psf__dot8* for psf_real (the float instantiation, or the double names). */
#define PSF__DOT8_DEFINE(P, T)                                                                                     \
    static int P##ot8_lanes(const T *a, const T *b, int K, T s8[8]) { /* the K - K % 8 terms */                    \
        int k = 0;                                                                                                 \
        for (; k + 8 <= K; k += 8)                                                                                 \
            for (int l = 0; l < 8; l++) s8[l] += a[k + l] * b[k + l];                                              \
        return k;                                                                                                  \
    }                                                                                                              \
    static T P##ot8_sum(const T s8[8], T s) {                                                                      \
        return s + (((s8[0] + s8[4]) + (s8[1] + s8[5])) + ((s8[2] + s8[6]) + (s8[3] + s8[7])));                    \
    }                                                                                                              \
    static T P##ot8(const T *a, const T *b, size_t sb, int K) {                                                    \
        T s8[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;                                                                 \
        int k = sb == 1 ? P##ot8_lanes(a, b, K, s8) : 0;                                                           \
        for (; k < K; k++) s += a[k] * b[(size_t)k * sb];                                                          \
        return P##ot8_sum(s8, s);                                                                                  \
    }
PSF__DOT8_DEFINE(psf__dd, double) /* psf__ddot8_lanes, psf__ddot8_sum, psf__ddot8 */
#if PSF__REAL_FLOAT
PSF__DOT8_DEFINE(psf__d, float) /* psf__dot8_lanes, psf__dot8_sum, psf__dot8 */
#else
#define psf__dot8_lanes psf__ddot8_lanes
#define psf__dot8_sum psf__ddot8_sum
#define psf__dot8 psf__ddot8
#endif
/* sum_k a[k], k < K, in psf__dot8's order (eight partial sums: vectorised, where a plain loop is a chain of adds) */
static psf_real psf__sum8(const psf_real *a, int K) {
    psf_real s8[8] = {0, 0, 0, 0, 0, 0, 0, 0}, s = 0;
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; l++) s8[l] += a[k + l];
    for (; k < K; k++) s += a[k];
    return psf__dot8_sum(s8, s);
}

/* C = alpha op(A) op(B) + beta C, row-major, op = transpose when ta / tb (cblas_dgemm semantics), for element type
 * T: the function NAME with micro-kernel KERNEL (MR x NR), CBLAS the OpenBLAS routine for the large products. */
#ifdef PSF_USE_CBLAS
#define PSF__GEMM_CBLAS(CBLAS)                                                                                     \
    if (K > 0 && (double)M * N * K >= PSF_CBLAS_MIN_MNK) {                                                         \
        CBLAS(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N, K, alpha, A,    \
              lda, B, ldb, beta, C, ldc);                                                                          \
        return;                                                                                                    \
    }
#else
#define PSF__GEMM_CBLAS(CBLAS)
#endif
#define PSF__GEMM_DEFINE(NAME, T, KERNEL, KERNEL_HALF, MR, NR, CBLAS, DOT8)                                        \
static void NAME(int ta, int tb, int M, int N, int K, double alpha, const T *A, int lda, const T *B, int ldb,    \
                 double beta, T *C, int ldc) {                                                                     \
    enum { MC = 8 * MR };                                                                                          \
    if (M <= 0 || N <= 0) return;                                                                                  \
    PSF__GEMM_CBLAS(CBLAS)                                                                                         \
    const int store = beta == 0.0 && N > 1 && K > 0; /* the first k-block stores C instead of adding to 0 */      \
    for (int i = 0; i < M && !store; i++) {                                                                        \
        T *c = C + (size_t)i * ldc;                                                                                \
        if (beta == 0.0) for (int j = 0; j < N; j++) c[j] = 0;                                                     \
        else if (beta != 1.0) for (int j = 0; j < N; j++) c[j] *= beta;                                           \
    }                                                                                                              \
    if (K <= 0) return;                                                                                            \
    if (N == 1) { /* matrix-vector: rows of A are dot products (or axpys when A is transposed) */                  \
        const size_t sb = tb ? 1 : (size_t)ldb; /* the stride of B's one column */                                 \
        if (ta) {                                                                                                  \
            for (int k = 0; k < K; k++) {                                                                          \
                const T bk = alpha * B[(size_t)k * sb], *a = A + (size_t)k * lda;                                  \
                if (ldc == 1) for (int i = 0; i < M; i++) C[i] += a[i] * bk;                                       \
                else for (int i = 0; i < M; i++) C[(size_t)i * ldc] += a[i] * bk;                                  \
            }                                                                                                      \
        } else {                                                                                                   \
            for (int i = 0; i < M; i++) /* eight partial sums in a fixed order: vectorised, and the same bits */   \
                C[(size_t)i * ldc] += alpha * DOT8(A + (size_t)i * lda, B, sb, K);                                 \
        }                                                                                                          \
        return;                                                                                                    \
    }                                                                                                              \
    T ap[MC * PSF__KC], bp[PSF__KC * NR], out[MR * NR];                                                            \
    for (int k0 = 0; k0 < K; k0 += PSF__KC) {                                                                      \
        const int kc = K - k0 < PSF__KC ? K - k0 : PSF__KC;                                                        \
        for (int m0 = 0; m0 < M; m0 += MC) {                                                                       \
            const int mc = M - m0 < MC ? M - m0 : MC;                                                              \
            for (int ir = 0; ir < mc; ir += MR) { /* a ragged sliver of A[m0.., k0..], k outer, zero padded */     \
                T *d = ap + (size_t)ir * kc;                                                                       \
                const int mr = mc - ir < MR ? mc - ir : MR;                                                        \
                if (mr == MR) continue; /* whole slivers are read in place */                                     \
                if (ta)                                                                                            \
                    for (int k = 0; k < kc; k++) {                                                                 \
                        const T *a = A + (size_t)(k0 + k) * lda + m0 + ir;                                         \
                        for (int i = 0; i < MR; i++) d[k * MR + i] = i < mr ? a[i] : 0.0;                          \
                    }                                                                                              \
                else                                                                                               \
                    for (int i = 0; i < MR; i++) {                                                                 \
                        const T *a = A + (size_t)(m0 + ir + i) * lda + k0;                                         \
                        for (int k = 0; k < kc; k++) d[k * MR + i] = i < mr ? a[k] : 0.0;                          \
                    }                                                                                              \
            }                                                                                                      \
            for (int j0 = 0; j0 < N; j0 += NR) {                                                                   \
                const int nr = N - j0 < NR ? N - j0 : NR;                                                          \
                const T *bs = bp;                                                                                  \
                size_t bld = NR;                                                                                   \
                if (!tb && nr == NR) { bs = B + (size_t)k0 * ldb + j0; bld = (size_t)ldb; }                        \
                else if (tb) { /* the transpose of B's rows j0.., zero columns past a ragged edge row by row */     \
                    if (nr <= NR / 2) /* the narrow kernel reads half a row */                                     \
                        for (int k = 0; k < kc; k++)                                                               \
                            for (int j = 0; j < NR / 2; j++) bp[k * NR + j] = 0;                                   \
                    else                                                                                           \
                        for (int k = 0; k < kc && nr < NR; k++) /* whole rows: NR constant, a few vector stores */ \
                            for (int j = 0; j < NR; j++) bp[k * NR + j] = 0;                                       \
                    const T *b = B + (size_t)j0 * ldb + k0; /* row k of bp gathers column k of those rows */       \
                    for (int k = 0; k < kc; k++)                                                                   \
                        for (int j = 0; j < nr; j++) bp[k * NR + j] = b[(size_t)j * ldb + k];                      \
                }                                                                                                  \
                else                                                                                               \
                    for (int k = 0; k < kc; k++) {                                                                 \
                        const T *b = B + (size_t)(k0 + k) * ldb + j0;                                              \
                        for (int j = 0; j < NR; j++) bp[k * NR + j] = j < nr ? b[j] : 0.0;                         \
                    }                                                                                              \
                for (int ir = 0; ir < mc; ir += MR) {                                                              \
                    const int mr = mc - ir < MR ? mc - ir : MR;                                                    \
                    const T *as = ap + (size_t)ir * kc; /* the sliver's a(i, k): packed, or A in place */          \
                    size_t sai = 1, sak = MR;                                                                      \
                    if (mr == MR && ta) { as = A + (size_t)k0 * lda + m0 + ir; sai = 1; sak = (size_t)lda; }       \
                    else if (mr == MR) { as = A + (size_t)(m0 + ir) * lda + k0; sai = (size_t)lda; sak = 1; }      \
                    if (alpha == 1.0 && mr == MR && nr == NR) { /* a whole tile straight into C: the same sums */  \
                        KERNEL(kc, as, sai, sak, bs, bld, C + (size_t)(m0 + ir) * ldc + j0, (size_t)ldc,          \
                               !(store && k0 == 0));                                                               \
                        continue;                                                                                  \
                    }                                                                                              \
                    if (nr <= NR / 2) KERNEL_HALF(kc, as, sai, sak, bs, bld, out, NR, 0); /* a narrow edge */        \
                    else KERNEL(kc, as, sai, sak, bs, bld, out, NR, 0);                                            \
                    for (int i = 0; i < mr; i++) {                                                                 \
                        T *c = C + (size_t)(m0 + ir + i) * ldc + j0;                                               \
                        if (store && k0 == 0) for (int j = 0; j < nr; j++) c[j] = alpha * out[i * NR + j];         \
                        else for (int j = 0; j < nr; j++) c[j] += alpha * out[i * NR + j];                         \
                    }                                                                                              \
                }                                                                                                  \
            }                                                                                                      \
        }                                                                                                          \
    }                                                                                                              \
}
PSF__GEMM_DEFINE(psf__dgemm, double, psf__dkernel, psf__dkernel_half, PSF__DMR, PSF__DNR, cblas_dgemm, psf__ddot8)
#if PSF__REAL_FLOAT
PSF__GEMM_DEFINE(psf__gemm, float, psf__skernel, psf__skernel_half, PSF__SMR, PSF__SNR, cblas_sgemm, psf__dot8)
#else
#define psf__gemm psf__dgemm
#endif

/* One entry of the built-in product alpha A B^T (beta = 0, N >= 2 columns, PSF_CBLAS_MIN_MNK not reached) whose
 * terms are zero outside k = lo .. hi - 1, from those terms alone: a[k - lo] b[k - lo]. The bits are the
 * product's: a multiply-add chain from 0 per PSF__KC block of k, fused as the micro-kernel's, each block's sum
 * scaled by alpha and added in order (the zero terms and blocks add exact zeros). The sparse jets use it. */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#if PSF__REAL_FLOAT
#define PSF__MAC(a, b, c) fmaf(a, b, c)
#else
#define PSF__MAC(a, b, c) fma(a, b, c)
#endif
#else
#define PSF__MAC(a, b, c) ((c) + (a) * (b)) /* the plain-C micro-kernel's r += a b */
#endif
static psf_real psf__gemm_entry(const psf_real *a, const psf_real *b, int lo, int hi, double alpha) {
    psf_real c = 0;
    for (int k = lo; k < hi;) {
        const int end = (k / PSF__KC + 1) * PSF__KC < hi ? (k / PSF__KC + 1) * PSF__KC : hi;
        psf_real acc = 0;
        for (; k < end; k++) acc = PSF__MAC(a[k - lo], b[k - lo], acc);
        c += alpha * acc;
    }
    return c;
}

/* The float32 Gram product for SPRING's kernel, C = A B^T, on rows stored in *panels*: the rows of a K-column
 * matrix in groups of PSF__GNR, panel q holding the K x PSF__GNR floats (k, r) -> q K PSF__GNR + k PSF__GNR + r of
 * rows q PSF__GNR + r (rows past the matrix's end are 0). SPRING writes its float32 copy of Ō in this layout while
 * it centres Ō, so the kernel reads its operands in place and packs nothing. A micro-tile is PSF__GMR rows of an A
 * panel (broadcast) against one B panel, computed by the product's own micro-kernel in float (8 x 32 with AVX-512,
 * 4 x 24 with AVX2, 4 x 8 in plain C); blocks of PSF__GKC terms are summed in float in registers, the blocks in
 * double: with u = 2^-24 every C_ij is within (PSF__GKC + 1) u sum_k |A_ik B_jk| of the exact product of the float
 * inputs. Each C_ij is summed in the same order whatever the panel width, the micro-tile or the caller's tiling, and
 * C_ij = C_ji bit for bit when A = B (the products commute and the order over k is the same). */
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
/* the product's own micro-kernel in float, on a panel: a(i, k) = ap[k PSF__GNR + i], b(k, j) = bp[k PSF__GNR + j] */
#define PSF__GL ((int)(sizeof(PSF__VS) / sizeof(float))) /* float lanes of a vector */
#if defined(__AVX512F__)
#define PSF__GMR 8
#define PSF__GNV 2 /* 8 x 32: 16 accumulators of 32 registers */
#else
#define PSF__GMR 4
#define PSF__GNV 3 /* 4 x 24: 12 accumulators, 3 rows of B and a broadcast fill the 16 registers */
#endif
#define PSF__GNR (PSF__GNV * PSF__GL)
PSF__SIMD_KERNEL_DEFINE(psf__gram_micro, float, PSF__GMR, PSF__GNV, PSF__GL, PSF__VS, PSF__VOP(setzero_ps),
                        PSF__VOP(loadu_ps), PSF__VOP(set1_ps), PSF__VOP(fmadd_ps), PSF__VOP(add_ps),
                        PSF__VOP(storeu_ps))
#else
#define PSF__GMR 4
#define PSF__GNR 8
PSF__KERNEL_DEFINE(psf__gram_micro, float, PSF__GMR, PSF__GNR)
#endif
/* the PSF__GMR x PSF__GNR tile of rows ap[0 .. PSF__GMR - 1] of an A panel against a B panel, kc terms, into out */
static void psf__gram_kernel(int kc, const float *ap, const float *bp, float *out) {
    psf__gram_micro(kc, ap, 1, PSF__GNR, bp, PSF__GNR, out, PSF__GNR, 0);
}
enum { PSF__GKC = 128 }; /* terms summed in float before they are added in double */
#define PSF__PANELS(rows) ((int)(((long long)(rows) + PSF__GNR - 1) / PSF__GNR)) /* panels holding `rows` rows */

/* C = A B^T: A's m rows in panels from Ap, B's n rows in panels from Bp, K terms; C m x n doubles with leading
 * dimension ldc, overwritten. upper (A = B, a diagonal tile): the panel pairs below the diagonal are not
 * computed (their entries are left 0; the caller mirrors them). Serial. For B rows (one A panel) the k-block of
 * both panels is 2 PSF__GKC PSF__GNR floats (32 KB with AVX-512): it stays in L1 while the slivers of A pass. */
static void psf__gram_f32(int m, int n, size_t K, const float *Ap, const float *Bp, double *C, int ldc, int upper) {
    float out[PSF__GMR * PSF__GNR];
    const size_t ps = K * PSF__GNR; /* floats per panel */
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) C[(size_t)i * ldc + j] = 0;
    for (size_t k0 = 0; k0 < K; k0 += PSF__GKC) {
        const int kc = K - k0 < PSF__GKC ? (int)(K - k0) : PSF__GKC;
        for (int qa = 0; qa < PSF__PANELS(m); qa++)
            for (int qb = upper ? qa : 0; qb < PSF__PANELS(n); qb++) {
                const float *a = Ap + qa * ps + k0 * PSF__GNR, *b = Bp + qb * ps + k0 * PSF__GNR;
                const int nr = n - qb * PSF__GNR < PSF__GNR ? n - qb * PSF__GNR : PSF__GNR;
                for (int s = 0; s < PSF__GNR && qa * PSF__GNR + s < m; s += PSF__GMR) {
                    psf__gram_kernel(kc, a + s, b, out);
                    const int mr = m - qa * PSF__GNR - s < PSF__GMR ? m - qa * PSF__GNR - s : PSF__GMR;
                    for (int i = 0; i < mr; i++) {
                        double *c = C + (size_t)(qa * PSF__GNR + s + i) * ldc + qb * PSF__GNR;
                        for (int j = 0; j < nr; j++) c[j] += (double)out[i * PSF__GNR + j];
                    }
                }
            }
    }
}

/* Terms k0 .. k0 + kc - 1 of a row (x[0 .. kc - 1]) into slot r of the panel that holds it, in float (row b of a
 * matrix is slot b mod PSF__GNR of panel b / PSF__GNR). */
static void psf__panel_row(float *panel, int r, const double *x, size_t k0, int kc) {
    float *f = panel + k0 * PSF__GNR + r;
    for (int k = 0; k < kc; k++) f[(size_t)k * PSF__GNR] = (float)x[k];
}

/* ============================================================================================================
 *  [IMPL: LINALG] LU log-determinant and inverse, Pfaffian and inverse (the Cholesky solver lives with KFAC)
 * ============================================================================================================ */

/* In-place LU with partial pivoting of the n x n row-major matrix a; piv[n] records row swaps.
 * Returns the sign of det (0 if a pivot is exactly zero) and *logabs = log|det| (-INFINITY if singular). */
static int psf__lu(int n, psf_real *a, int *piv, double *logabs) {
    int sign = 1;
    double la = 0.0;
    for (int k = 0; k < n; k++) {
        int p = k;
        double best = fabs(a[(size_t)k * n + k]);
        for (int i = k + 1; i < n; i++) {
            double v = fabs(a[(size_t)i * n + k]);
            if (v > best) { best = v; p = i; }
        }
        piv[k] = p;
        if (best == 0.0) { *logabs = -INFINITY; return 0; }
        if (p != k) {
            for (int j = 0; j < n; j++) { psf_real t = a[(size_t)k * n + j]; a[(size_t)k * n + j] = a[(size_t)p * n + j]; a[(size_t)p * n + j] = t; }
            sign = -sign;
        }
        psf_real d = a[(size_t)k * n + k];
        if (d < 0) sign = -sign;
        la += log(fabs(d));
        for (int i = k + 1; i < n; i++) {
            psf_real f = a[(size_t)i * n + k] / d;
            a[(size_t)i * n + k] = f;
            if (f != 0)
                for (int j = k + 1; j < n; j++) a[(size_t)i * n + j] -= f * a[(size_t)k * n + j];
        }
    }
    *logabs = la;
    return sign;
}

/* inv = A^{-1} from the LU factors of psf__lu (nonsingular). */
static void psf__lu_inverse(int n, const psf_real *lu, const int *piv, psf_real *inv) {
    /* Solve A X = I column by column: P A = L U with the swaps applied in order. */
    for (int i = 0; i < n * n; i++) inv[i] = 0;
    for (int i = 0; i < n; i++) inv[(size_t)i * n + i] = 1;
    for (int k = 0; k < n; k++)
        if (piv[k] != k)
            for (int j = 0; j < n; j++) { psf_real t = inv[(size_t)k * n + j]; inv[(size_t)k * n + j] = inv[(size_t)piv[k] * n + j]; inv[(size_t)piv[k] * n + j] = t; }
    for (int c = 0; c < n; c++) {
        for (int i = 0; i < n; i++) { /* forward: L y = b (unit diagonal) */
            psf_real s = inv[(size_t)i * n + c];
            for (int k = 0; k < i; k++) s -= lu[(size_t)i * n + k] * inv[(size_t)k * n + c];
            inv[(size_t)i * n + c] = s;
        }
        for (int i = n - 1; i >= 0; i--) { /* backward: U x = y */
            psf_real s = inv[(size_t)i * n + c];
            for (int k = i + 1; k < n; k++) s -= lu[(size_t)i * n + k] * inv[(size_t)k * n + c];
            inv[(size_t)i * n + c] = s / lu[(size_t)i * n + i];
        }
    }
}

double psf_logdet(int n, const psf_real *M, psf_real *lu, int *piv, int *sign) {
    double la = -INFINITY;
    memcpy(lu, M, sizeof(psf_real) * (size_t)n * n);
    *sign = psf__lu(n, lu, piv, &la);
    return la;
}

/* Skew-symmetric Parlett–Reid factorisation in place (the method is described at psf_logpfaffian), n even:
 *   P A P^T = L D L^T,  D = diag of the 2 x 2 blocks [[0, d_b], [-d_b, 0]],  L unit lower triangular with 2 x 2
 *   identity diagonal blocks (L_{2b+1,2b} = 0),
 * so Pf A = det(P) prod_b d_b. On entry the strict upper triangle of w [n*n] holds A (nothing else is read); on
 * exit w_{2b,2b+1} = d_b, w_{2b,2b} = w_{2b+1,2b+1} = 1/d_b, the strict lower triangle holds L (with its zeros),
 * and the rest of the upper triangle is scratch. perm [n] (or NULL) receives the permutation: (P A P^T)_ij =
 * A_{perm[i], perm[j]}. Returns sign(Pf A) and *logabs = log|Pf A|; if a pivot row is exactly zero, 0 and
 * -INFINITY (w is then partly factored).
 * Only the upper triangle of the active block is kept up to date (it is skew-symmetric), so a swap of indices q < p
 * maps A_qj (q < j < p, upper) to A_pj = -A_jp (lower, stored as its upper mirror), and A_qp to -A_qp. */
static int psf__pfaffian_factor(int n, psf_real *w, int *perm, double *logabs) {
    int sign = 1;
    double la = 0.0;
    if (perm)
        for (int i = 0; i < n; i++) perm[i] = i;
    for (int k = 0; k + 1 < n; k += 2) {
        psf_real *rk = w + (size_t)k * n, *rq = w + (size_t)(k + 1) * n;
        const int q = k + 1;
        int p = q;
        double best = fabs(rk[q]);
        for (int j = q + 1; j < n; j++)
            if (fabs(rk[j]) > best) { best = fabs(rk[j]); p = j; }
        if (best == 0.0) { *logabs = -INFINITY; return 0; }
        if (p != q) { /* swap rows and columns q and p of the active block, and rows q and p of L */
            psf_real *rp = w + (size_t)p * n, t;
            t = rk[q]; rk[q] = rk[p]; rk[p] = t;
            for (int j = q + 1; j < p; j++) { t = rq[j]; rq[j] = -w[(size_t)j * n + p]; w[(size_t)j * n + p] = -t; }
            rq[p] = -rq[p];
            for (int j = p + 1; j < n; j++) { t = rq[j]; rq[j] = rp[j]; rp[j] = t; }
            for (int j = 0; j < k; j++) { t = rq[j]; rq[j] = rp[j]; rp[j] = t; }
            if (perm) { const int ti = perm[q]; perm[q] = perm[p]; perm[p] = ti; }
            sign = -sign;
        }
        const psf_real d = rk[q], dinv = 1 / d;
        if (d < 0) sign = -sign;
        la += log(fabs(d));
        rk[k] = rq[q] = dinv;
        rq[k] = 0;
        /* row k becomes tau_j = A_kj / d (|tau| <= 1); the Schur complement of the 2 x 2 block, upper triangle:
         * S_ij = A_ij + A_{k+1,i} tau_j - tau_i A_{k+1,j}. Column j of L: L_jk = -A_{k+1,j} / d, L_{j,k+1} = tau_j. */
        for (int j = k + 2; j < n; j++) rk[j] *= dinv;
        for (int i = k + 2; i < n; i++) {
            psf_real *ri = w + (size_t)i * n;
            const psf_real ci = rq[i], ti = rk[i];
            ri[k] = -ci * dinv;
            ri[k + 1] = ti;
            for (int j = i + 1; j < n; j++) ri[j] += ci * rk[j] - ti * rq[j];
        }
    }
    *logabs = la;
    return sign;
}

double psf_logpfaffian(int n, const psf_real *A, psf_real *work, int *sign) {
    if (n & 1) { *sign = 0; return -INFINITY; } /* det A = det A^T = (-1)^n det A = 0 */
    double la = 0.0;
    memcpy(work, A, sizeof(psf_real) * (size_t)n * n);
    *sign = psf__pfaffian_factor(n, work, NULL, &la);
    return la;
}

/* log|Pf A| and its sign as psf_logpfaffian, and inv = A^{-1} [n*n] (exactly skew-symmetric: the upper triangle is
 * computed, the lower one mirrored), the backward rule's matrix: d log|Pf A| / dA_ij = (A^{-1})_ji for i < j.
 * Scratch: work [n*n] reals, perm [n] ints. For odd n or an exactly singular A: sign 0, -INFINITY, inv not written.
 * From P A P^T = L D L^T: A^{-1} = P^T Y^T D^{-1} Y P with Y = L^{-1}, and for i < j
 *   (Y^T D^{-1} Y)_ij = sum_b (Y_{2b+1,i} Y_{2b,j} - Y_{2b,i} Y_{2b+1,j}) / d_b,
 * where only the blocks b >= j/2 contribute (Y is lower triangular). Cost about n^3/2 multiply-adds after the
 * factorisation. The LOGPF op's jet and backward rules use it (tests also reach it via psf_test_pfaffian_inverse). */
static double psf__pfaffian_inverse(int n, const psf_real *A, psf_real *work, int *perm, psf_real *inv,
                                                int *sign) {
    if (n & 1) { *sign = 0; return -INFINITY; }
    double la = 0.0;
    memcpy(work, A, sizeof(psf_real) * (size_t)n * n);
    *sign = psf__pfaffian_factor(n, work, perm, &la);
    if (*sign == 0) return la;
    /* Y = L^{-1} in place over the strict lower triangle, row by row: Y_ij = -(L_ij + sum_{j<m<i} L_im Y_mj) */
    for (int i = 2; i < n; i++) {
        psf_real *ri = work + (size_t)i * n;
        for (int j = 0; j < i; j++) {
            psf_real s = ri[j];
            for (int m = j + 1; m < i; m++) s += ri[m] * work[(size_t)m * n + j];
            ri[j] = -s;
        }
    }
    /* (Y^T D^{-1} Y)_ij, i < j: the block b0 = j/2 holding j has Y_{2b0+1,j} = 1, Y_{2b0,j} = 0 (j odd) or
     * Y_{2b0,j} = 1, Y_{2b0+1,j} = 0 (j even); every later block reads the strict lower triangle only. */
    for (int i = 0; i < n; i++) inv[(size_t)i * n + i] = 0;
    for (int j = 1; j < n; j++) {
        const int b0 = j / 2;
        for (int i = 0; i < j; i++) {
            const psf_real r0 = work[(size_t)(2 * b0) * n + 2 * b0]; /* 1/d_b0 */
            psf_real s;
            if (j & 1) s = -r0 * (i == 2 * b0 ? 1.0 : work[(size_t)(2 * b0) * n + i]);
            else s = r0 * work[(size_t)(2 * b0 + 1) * n + i];
            for (int b = b0 + 1; 2 * b < n; b++) {
                const psf_real *y0 = work + (size_t)(2 * b) * n, *y1 = y0 + n;
                s += (y1[i] * y0[j] - y0[i] * y1[j]) * y0[2 * b];
            }
            inv[(size_t)perm[i] * n + perm[j]] = s;
            inv[(size_t)perm[j] * n + perm[i]] = -s;
        }
    }
    return la;
}

/* ============================================================================================================
 *  [IMPL: TAPE] op table and the three rules of every op: forward (values), jet (value, gradient w.r.t. the 3N
 *  electron coordinates, Laplacian; Li et al. 2024), backward (vector-Jacobian product).
 *
 *  A node's jet block holds D + 2 consecutive slices of n reals (D = 3N): slice 0 the value, slice 1 + d the
 *  derivative along coordinate d, slice D + 1 the Laplacian. In forward mode only slice 0 is computed, at the
 *  node's value offset. In jet mode the blocks live at jet offsets that nodes share once the jets they held have
 *  been read by their last consumer (liveness; carbon: the peak live set, not all 38 blocks), and each node's
 *  slice 0 is copied to its value offset as it is computed, for the backward pass.
 * ============================================================================================================ */

#define PSF__N(nd) ((size_t)(nd)->rows * (size_t)(nd)->cols)
#define PSF__J(ws, nd) ((ws)->jet + ((ws)->jet_mode ? (nd)->joff : (nd)->off))
#define PSF__A(ws, nd) ((ws)->adj + (nd)->adj_off)
#define PSF_LN_EPS 1e-5

/* What an op's rules see: the graph's nodes, the parameters, the nuclei and spins, one walker's coordinates and
 * its workspace; never the model. */
typedef struct {
    const psf_node *nodes;
    const psf_real *params;
    const psf_system *sys; /* nuclei (R, Z) and n_up                       */
    psf_workspace *ws;
    const psf_real *x;     /* coordinates [3N]                             */
    int N, D;              /* electrons, 3N                                */
    int nb;                /* slices computed: 1 (forward) or D + 2        */
    psf_real *dparams;     /* backward: parameter adjoint (or NULL)        */
    int copies;            /* psf__run_block's LINEAR: that many walkers' values follow one another from the
                              nodes' offsets (forward, nb = 1); 0 otherwise */
} psf__ctx;

/* Sparsity and scratch rules shared by several ops (an op's own rules call these or compute their own). */
static int psf__sparse_none(const psf_node *nodes, const psf_node *nd) { (void)nodes; (void)nd; return 0; }
static int psf__sparse_rowwise(const psf_node *nodes, const psf_node *nd) { return nodes[nd->in0].sparse; }
static size_t psf__scratch_none(const psf_node *nodes, const psf_node *nd, int D) { (void)nodes; (void)nd; (void)D; return 0; }

/* ---- Graph building: a node and a parameter block (used by each op's constructor) ---------------------- */
/* Marks the model being built as too large; the first reason stays in psf_last_error(). */
static void psf__too_large(psf_model *m, const char *what, long long n, long long limit) {
    if (!m->too_large)
        psf__fail(PSF_ERR_ARG, "psf_model_init: network too large: %s %lld exceeds %lld", what, n, limit);
    m->too_large = 1;
}

/* Appends a node. A full node table or a value of more than INT_MAX reals marks the model too large (the node
 * is then not added or kept with its shape; psf_model_init refuses the model before using it). */
static int psf__node(psf_model *m, psf_op op, int in0, int in1, int rows, int cols) {
    if (m->n_nodes >= PSF_MAX_NODES) {
        psf__too_large(m, "node count", (long long)m->n_nodes + 1, PSF_MAX_NODES);
        return m->n_nodes - 1;
    }
    if ((long long)rows * cols > INT_MAX) psf__too_large(m, "node size (reals)", (long long)rows * cols, INT_MAX);
    psf_node *nd = &m->nodes[m->n_nodes];
    memset(nd, 0, sizeof *nd);
    nd->op = op; nd->in0 = in0; nd->in1 = in1; nd->rows = rows; nd->cols = cols;
    nd->p_off = -1; nd->ic = 1;
    return m->n_nodes++;
}

static void psf__pblock(psf_model *m, int node, const char *name, int rows, int cols, psf_pblock_kind kind) {
    if (m->n_pblocks >= PSF_MAX_PBLOCKS) {
        psf__too_large(m, "parameter block count", (long long)m->n_pblocks + 1, PSF_MAX_PBLOCKS);
        return;
    }
    const long long len = (long long)rows * cols;
    if (len > INT_MAX - (long long)m->n_params || len > INT_MAX - (long long)m->nodes[node].p_len) {
        psf__too_large(m, "parameter count", (long long)m->n_params + len, INT_MAX); /* offsets are int */
        return;
    }
    psf_pblock *b = &m->pblocks[m->n_pblocks++];
    snprintf(b->name, sizeof b->name, "%s", name);
    b->off = (int)m->n_params; b->rows = rows; b->cols = cols; b->kind = kind; b->node = node;
    if (m->nodes[node].p_off < 0) m->nodes[node].p_off = (int)m->n_params;
    m->nodes[node].p_len += rows * cols;
    m->n_params += (size_t)rows * cols;
}


/* Electron-nucleus geometry for electron i and atom I: r = x_i - R_I and rho = |r| (floored to avoid 0/0). */
static double psf__dist(const double *R, const psf_real *xi, double r[3]) {
    r[0] = xi[0] - R[0]; r[1] = xi[1] - R[1]; r[2] = xi[2] - R[2];
    double rho = sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
    return rho > 1e-12 ? rho : 1e-12;
}

/* ---- INPUT: slice 0 = x; the gradient slices are the identity; Laplacian 0 ---------------------------- */
static void psf__input_fwd(psf__ctx *c, const psf_node *nd) {
    psf_real *y = PSF__J(c->ws, nd);
    size_t n = PSF__N(nd);
    memcpy(y, c->x, sizeof(psf_real) * n);
    if (c->nb > 1) {
        memset(y + n, 0, sizeof(psf_real) * n * (size_t)(c->D + 1));
        for (int d = 0; d < c->D; d++) y[(size_t)(1 + d) * n + d] = 1;
    }
}
static void psf__input_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *a = PSF__A(c->ws, nd);
    for (int d = 0; d < c->D; d++) c->ws->dx[d] += a[d];
}
static int psf__input_sparse(const psf_node *nodes, const psf_node *nd) { (void)nodes; (void)nd; return 1; }
#define psf__input_scratch psf__scratch_none
#ifdef PSF_INTERNAL_TESTS
static int psf__input_example(psf_model *m, int x) { (void)m; return x; }
#endif

/* ---- FEATURES: per electron i, per nucleus I: [l, r_x g, r_y g, r_z g], l = log(1+rho), g = l/rho;
 *      then the spin (+1 up, -1 down). Rescaled FermiNet inputs (von Glehn et al. 2023, §3; FermiNet
 *      make_ferminet_features with rescale_inputs). The input must be the INPUT node, so that the jet can use
 *      the closed-form first and second derivatives:
 *        d l / d x_c = r_c / (rho (1+rho)),          lap l = -1/(1+rho)^2 + 2 / (rho (1+rho))
 *        d (r_c g) / d x_c' = delta g + r_c r_c' g'/rho,  lap (r_c g) = r_c (g'' + 4 g'/rho).               */
static void psf__logratio(double rho, double *g, double *g1, double *g2) {
    if (rho < 1e-2) { /* series of log(1+rho)/rho = sum_k (-1)^k rho^k / (k+1), avoids cancellation */
        double s0 = 0, s1 = 0, s2 = 0, p = 1;
        for (int k = 0; k <= 10; k++) {
            double sg = (k & 1) ? -1.0 : 1.0;
            s0 += sg * p / (k + 1);
            if (k + 1 <= 10) { /* coefficient of rho^k in g' is (-1)^(k+1) (k+1)/(k+2) */
                s1 += -sg * (k + 1) * p / (k + 2);
                s2 += sg * (k + 2) * (k + 1) * p / (k + 3);
            }
            p *= rho;
        }
        *g = s0; *g1 = s1; *g2 = s2;
    } else {
        double l = log1p(rho), l1 = 1 / (1 + rho), l2 = -l1 * l1;
        *g = l / rho;
        *g1 = l1 / rho - l / (rho * rho);
        *g2 = l2 / rho - 2 * l1 / (rho * rho) + 2 * l / (rho * rho * rho);
    }
}

static void psf__features_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_system *sys = c->sys;
    const int N = nd->rows, F = nd->cols, A = sys->n_atoms;
    psf_real *y = PSF__J(c->ws, nd);
    const size_t n = PSF__N(nd);
    if (c->nb > 1) memset(y + n, 0, sizeof(psf_real) * n * (size_t)(c->D + 1));
    for (int i = 0; i < N; i++) {
        for (int at = 0; at < A; at++) {
            double r[3], rho = psf__dist(sys->R[at], c->x + 3 * i, r), g, g1, g2;
            psf__logratio(rho, &g, &g1, &g2);
            psf_real *row = y + (size_t)i * F + 4 * at;
            row[0] = log1p(rho);
            for (int k = 0; k < 3; k++) row[1 + k] = r[k] * g;
            if (c->nb == 1) continue;
            const double l1 = 1 / (1 + rho);
            for (int cc = 0; cc < 3; cc++) {
                psf_real *gs = y + (size_t)(1 + 3 * i + cc) * n + (size_t)i * F + 4 * at;
                gs[0] = l1 * r[cc] / rho;
                for (int k = 0; k < 3; k++) gs[1 + k] = (k == cc ? g : 0.0) + r[k] * r[cc] * g1 / rho;
            }
            psf_real *L = y + (size_t)(1 + c->D) * n + (size_t)i * F + 4 * at;
            L[0] = -l1 * l1 + 2 * l1 / rho;
            for (int k = 0; k < 3; k++) L[1 + k] = r[k] * (g2 + 4 * g1 / rho);
        }
        y[(size_t)i * F + 4 * A] = i < sys->n_up ? 1.0 : -1.0;
    }
}
static void psf__features_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_system *sys = c->sys;
    const int N = nd->rows, F = nd->cols, A = sys->n_atoms;
    const psf_real *a = PSF__A(c->ws, nd);
    for (int i = 0; i < N; i++)
        for (int at = 0; at < A; at++) {
            double r[3], rho = psf__dist(sys->R[at], c->x + 3 * i, r), g, g1, g2;
            psf__logratio(rho, &g, &g1, &g2);
            const psf_real *ar = a + (size_t)i * F + 4 * at;
            for (int cc = 0; cc < 3; cc++) {
                double s = ar[0] * r[cc] / (rho * (1 + rho));
                for (int k = 0; k < 3; k++) s += ar[1 + k] * ((k == cc ? g : 0.0) + r[k] * r[cc] * g1 / rho);
                c->ws->dx[3 * i + cc] += s;
            }
        }
}
#define psf__features_sparse psf__input_sparse
#define psf__features_scratch psf__scratch_none
static int psf__features_node(psf_model *m, int x) {
    return psf__node(m, PSF_OP_FEATURES, x, -1, m->n_elec, 4 * m->sys.n_atoms + 1);
}
#ifdef PSF_INTERNAL_TESTS
static int psf__features_example(psf_model *m, int x) { return psf__features_node(m, x); }
#endif

/* ---- LINEAR: Y[t] = X[t] W_g + b_g for rows t of group g (group 0: t < split; group 1: t >= split, e.g. the
 *      spin channels of the orbital projection). Params per group: W [a x b] then b [b] if has_bias.
 *      ia = split, ib = has_bias, ic = number of groups. Jet: linear, so every slice maps by W; bias only on
 *      slice 0. Backward: dW += X^T dY, db += sum_t dY, dX += dY W^T.                                       */
static void psf__linear_groups(const psf_node *nd, int g, int *r0, int *r1, size_t *poff, int a) {
    const int T = nd->rows, b = nd->cols;
    *r0 = g == 0 ? 0 : nd->ia;
    *r1 = g == 0 ? (nd->ic > 1 ? nd->ia : T) : T;
    *poff = (size_t)nd->p_off + (size_t)g * ((size_t)a * b + (nd->ib ? (size_t)b : 0));
}
/* Rows r0 .. r1 - 1 of `count` stacked a-column matrices X_s = X + s nx, times W (a x b), into the same rows of
 * Y_s = Y + s ny: gathered into one product (scratch: count (r1 - r0) (a + b) reals). Each row is the product
 * of that row alone, so the bits are those of count separate products. The jet's slices of a spin-split layer,
 * and a block of walkers' (psf__run_block). */
static void psf__linear_gathered(psf_real *scratch, int count, int r0, int r1, int a, int b, const psf_real *X,
                                 size_t nx, const psf_real *W, psf_real *Y, size_t ny) {
    const int n = r1 - r0;
    psf_real *G = scratch, *R = G + (size_t)count * n * a;
    for (int s = 0; s < count; s++)
        memcpy(G + (size_t)s * n * a, X + s * nx + (size_t)r0 * a, sizeof(psf_real) * (size_t)n * a);
    psf__gemm(0, 0, count * n, b, a, 1.0, G, a, W, b, 0.0, R, b);
    for (int s = 0; s < count; s++)
        memcpy(Y + s * ny + (size_t)r0 * b, R + (size_t)s * n * b, sizeof(psf_real) * (size_t)n * b);
}
static void psf__linear_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int T = nd->rows, a = in->cols, b = nd->cols;
    const psf_real *X = PSF__J(c->ws, in);
    psf_real *Y = PSF__J(c->ws, nd);
    const size_t nx = PSF__N(in), ny = PSF__N(nd);
    /* stacked matrices of T rows, nx / ny apart: the jet's slices, or a block's walkers (each with its bias) */
    const int cp = c->copies > 1 ? c->copies : 1, ns = c->nb * cp;
    PSF_ASSERT(cp == 1 || c->nb == 1); /* walkers stack values only: a jet's slices and its bias would interleave */
    for (int g = 0; g < nd->ic; g++) {
        int r0, r1; size_t po;
        psf__linear_groups(nd, g, &r0, &r1, &po, a);
        if (r1 <= r0) continue;
        const psf_real *W = c->params + po;
        if (nd->ic == 1 && c->nb > 1 && in->sparse) {
            /* per-electron input (the first layers): derivative slice d has one nonzero row, d / 3, so the D
             * derivative rows form one D x a product instead of D T x a (Li et al. 2024's sparsity) */
            const int D = c->D;
            psf_real *G = c->ws->scratch, *R = G + (size_t)D * a;
            psf__gemm(0, 0, T, b, a, 1.0, X, a, W, b, 0.0, Y, b);
            psf__gemm(0, 0, T, b, a, 1.0, X + (size_t)(D + 1) * nx, a, W, b, 0.0, Y + (size_t)(D + 1) * ny, b);
            for (int d = 0; d < D; d++) memcpy(G + (size_t)d * a, X + (size_t)(1 + d) * nx + (size_t)(d / 3) * a, sizeof(psf_real) * a);
            psf__gemm(0, 0, D, b, a, 1.0, G, a, W, b, 0.0, R, b);
            memset(Y + ny, 0, sizeof(psf_real) * ny * (size_t)D);
            for (int d = 0; d < D; d++) memcpy(Y + (size_t)(1 + d) * ny + (size_t)(d / 3) * b, R + (size_t)d * b, sizeof(psf_real) * b);
        } else if (nd->ic == 1) /* all stacked matrices are one (ns T) x a by a x b product */
            psf__gemm(0, 0, ns * T, b, a, 1.0, X, a, W, b, 0.0, Y, b);
        else if (ns > 1) /* the group's rows of every stacked matrix, gathered: one (ns n) x a by a x b product */
            psf__linear_gathered(c->ws->scratch, ns, r0, r1, a, b, X, nx, W, Y, ny);
        else
            psf__gemm(0, 0, r1 - r0, b, a, 1.0, X + (size_t)r0 * a, a, W, b, 0.0, Y + (size_t)r0 * b, b);
        if (nd->ib) { /* on the value: slice 0, or every walker of a block */
            const psf_real *bias = W + (size_t)a * b;
            for (int s = 0; s < cp; s++)
                for (int t = r0; t < r1; t++) for (int j = 0; j < b; j++) Y[s * ny + (size_t)t * b + j] += bias[j];
        }
    }
}
static void psf__linear_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int a = in->cols, b = nd->cols;
    const psf_real *X = PSF__J(c->ws, in), *dY = PSF__A(c->ws, nd);
    psf_real *dX = PSF__A(c->ws, in);
    for (int g = 0; g < nd->ic; g++) {
        int r0, r1; size_t po;
        psf__linear_groups(nd, g, &r0, &r1, &po, a);
        if (r1 <= r0) continue;
        const psf_real *W = c->params + po;
        if (c->dparams) {
            psf__gemm(1, 0, a, b, r1 - r0, 1.0, X + (size_t)r0 * a, a, dY + (size_t)r0 * b, b, 1.0, c->dparams + po, b);
            if (nd->ib) {
                psf_real *db = c->dparams + po + (size_t)a * b;
                for (int t = r0; t < r1; t++) for (int j = 0; j < b; j++) db[j] += dY[(size_t)t * b + j];
            }
        }
        psf__gemm(0, 1, r1 - r0, a, b, 1.0, dY + (size_t)r0 * b, b, W, b, 1.0, dX + (size_t)r0 * a, a);
    }
    if (c->ws->observe) c->ws->observe(c->ws->observe_ctx, (int)(nd - c->nodes), nd, X, dY);
}
#define psf__linear_sparse psf__sparse_rowwise
static size_t psf__linear_scratch(const psf_node *nodes, const psf_node *nd, int D) {
    const size_t ab = (size_t)(nodes[nd->in0].cols + nd->cols);
    /* the sparse path's G, R; with two groups, a group's rows of the D + 2 slices and their product */
    return nd->ic > 1 ? (size_t)(D + 2) * (size_t)nd->rows * ab : (size_t)D * ab;
}
/* LINEAR node with groups (split rows) and optional bias; registers parameter blocks name.w / name.b. */
static int psf__linear(psf_model *m, int in, int out_cols, int bias, int split, const char *name) {
    const int T = m->nodes[in].rows, a = m->nodes[in].cols;
    const int k = psf__node(m, PSF_OP_LINEAR, in, -1, T, out_cols);
    const int groups = split < T ? 2 : 1;
    char nm[40];
    m->nodes[k].ia = split; m->nodes[k].ib = bias; m->nodes[k].ic = groups;
    for (int g = 0; g < groups; g++) {
        snprintf(nm, sizeof nm, groups > 1 ? "%s%d.w" : "%s.w", name, g);
        psf__pblock(m, k, nm, a, out_cols, PSF_PB_WEIGHT);
        if (bias) {
            snprintf(nm, sizeof nm, groups > 1 ? "%s%d.b" : "%s.b", name, g);
            psf__pblock(m, k, nm, 1, out_cols, PSF_PB_BIAS);
        }
    }
    return k;
}

#ifdef PSF_INTERNAL_TESTS
static int psf__linear_example(psf_model *m, int x) { /* the sparse path, then two spin groups with biases */
    const int h = psf__linear(m, psf__features_node(m, x), 5, 0, m->n_elec, "ex.a");
    return psf__linear(m, h, 4, 1, m->sys.n_up, "ex.b");
}
#endif

/* ---- ADD: Y = A + B in every slice; backward passes the adjoint to both. ---------------------------------- */
static void psf__add_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *A = PSF__J(c->ws, &c->nodes[nd->in0]), *B = PSF__J(c->ws, &c->nodes[nd->in1]);
    psf_real *Y = PSF__J(c->ws, nd);
    const size_t tot = PSF__N(nd) * (size_t)c->nb;
    for (size_t i = 0; i < tot; i++) Y[i] = A[i] + B[i];
}
static void psf__add_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *a = PSF__A(c->ws, nd);
    psf_real *dA = PSF__A(c->ws, &c->nodes[nd->in0]), *dB = PSF__A(c->ws, &c->nodes[nd->in1]);
    const size_t n = PSF__N(nd);
    for (size_t i = 0; i < n; i++) { dA[i] += a[i]; dB[i] += a[i]; }
}
static int psf__add_sparse(const psf_node *nodes, const psf_node *nd) {
    return nodes[nd->in0].sparse && nodes[nd->in1].sparse;
}
#define psf__add_scratch psf__scratch_none
#ifdef PSF_INTERNAL_TESTS
static int psf__add_example(psf_model *m, int x) { /* a sparse and a dense summand */
    const int f = psf__features_node(m, x), a = psf__linear(m, f, 4, 0, m->n_elec, "ex.a");
    const int b = psf__linear(m, psf__linear(m, f, 4, 1, m->sys.n_up, "ex.b"), 4, 0, m->n_elec, "ex.c");
    return psf__node(m, PSF_OP_ADD, a, b, m->n_elec, 4);
}
#endif

/* ---- TANH: y = tanh x; y_d = (1-y^2) x_d; lap y = (1-y^2) lap x - 2 y (1-y^2) sum_d x_d^2. ---------------- */
static void psf__tanh_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *X = PSF__J(c->ws, &c->nodes[nd->in0]);
    psf_real *Y = PSF__J(c->ws, nd);
    const size_t n = PSF__N(nd);
    psf__vtanh(X, Y, n);
    if (c->nb == 1) return;
    psf_real *YL = Y + (size_t)(c->D + 1) * n, *t = c->ws->scratch; /* t = tanh' = 1 - y^2, once */
    const psf_real *XL = X + (size_t)(c->D + 1) * n;
    for (size_t i = 0; i < n; i++) { YL[i] = 0; t[i] = 1 - Y[i] * Y[i]; }
    for (int d = 0; d < c->D; d++) {
        const psf_real *Xd = X + (size_t)(1 + d) * n;
        psf_real *Yd = Y + (size_t)(1 + d) * n;
        for (size_t i = 0; i < n; i++) { Yd[i] = t[i] * Xd[i]; YL[i] += Xd[i] * Xd[i]; }
    }
    for (size_t i = 0; i < n; i++) YL[i] = t[i] * XL[i] - 2 * Y[i] * t[i] * YL[i];
}
static void psf__tanh_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *Y = PSF__J(c->ws, nd), *a = PSF__A(c->ws, nd);
    psf_real *dX = PSF__A(c->ws, &c->nodes[nd->in0]);
    const size_t n = PSF__N(nd);
    for (size_t i = 0; i < n; i++) dX[i] += a[i] * (1 - Y[i] * Y[i]);
}
#define psf__tanh_sparse psf__sparse_rowwise
static size_t psf__tanh_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* the jet's 1 - y^2 */
    (void)nodes; (void)D;
    return PSF__N(nd);
}
#ifdef PSF_INTERNAL_TESTS
static int psf__tanh_example(psf_model *m, int x) {
    const int h = psf__linear(m, psf__features_node(m, x), 5, 1, m->n_elec, "ex.a");
    return psf__node(m, PSF_OP_TANH, h, -1, m->n_elec, 5);
}
#endif

/* ---- LAYERNORM over each row of F features: y = gamma (x - mu) s + beta, s = (var + eps)^{-1/2}, eps = 1e-5
 *      (Ba, Kiros, Hinton 2016; population variance as in the Psiformer reference). Jet with C = x - mu:
 *        v = mean(C0^2); dv_d = 2 mean(C0 C_d); ds_d = -s^3 dv_d / 2
 *        Lv = 2 mean(C0 C_L) + 2 sum_d mean(C_d^2); Ls = -s^3 Lv / 2 + 3 s^5 sum_d dv_d^2 / 4
 *        n_d = C_d s + C0 ds_d;  n_L = C_L s + C0 Ls + 2 sum_d C_d ds_d.  Params: gamma [F], beta [F].     */
static void psf__layernorm_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int T = nd->rows, F = nd->cols, D = c->D;
    const size_t n = PSF__N(nd);
    const psf_real *X = PSF__J(c->ws, in), *gam = c->params + nd->p_off, *bet = gam + F;
    psf_real *Y = PSF__J(c->ws, nd), *ds = c->ws->scratch;
    for (int t = 0; t < T; t++) {
        for (int s = 0; s < c->nb; s++) { /* C_s = X_s - mean(X_s), written into Y */
            const psf_real *xs = X + s * n + (size_t)t * F;
            psf_real *ys = Y + s * n + (size_t)t * F;
            const psf_real mu = psf__sum8(xs, F) / F;
            for (int f = 0; f < F; f++) ys[f] = xs[f] - mu;
        }
        psf_real *C0 = Y + (size_t)t * F;
        const double v = psf__dot8(C0, C0, 1, F) / F;
        const double sc = 1 / sqrt(v + PSF_LN_EPS);
        if (c->nb > 1) {
            const double s3 = sc * sc * sc;
            double sdv2 = 0;
            psf_real *CL = Y + (size_t)(D + 1) * n + (size_t)t * F;
            double Lv = psf__dot8(C0, CL, 1, F) * (2.0 / F);
            for (int d = 0; d < D; d++) { /* the reductions in psf__dot8's eight partial sums (vectorised) */
                const psf_real *Cd = Y + (size_t)(1 + d) * n + (size_t)t * F;
                const double dv = psf__dot8(C0, Cd, 1, F) * (2.0 / F), q = psf__dot8(Cd, Cd, 1, F);
                Lv += 2.0 * q / F;
                sdv2 += dv * dv;
                ds[d] = -0.5 * s3 * dv;
            }
            const double Ls = -0.5 * s3 * Lv + 0.75 * s3 * sc * sc * sdv2;
            psf_real *acc = ds + D; /* sum_d C_d ds_d, accumulated slice by slice (contiguous in f) */
            for (int f = 0; f < F; f++) acc[f] = 0;
            for (int d = 0; d < D; d++) {
                const psf_real *Cd = Y + (size_t)(1 + d) * n + (size_t)t * F;
                for (int f = 0; f < F; f++) acc[f] += Cd[f] * ds[d];
            }
            for (int f = 0; f < F; f++) CL[f] = gam[f] * (CL[f] * sc + C0[f] * Ls + 2 * acc[f]);
            for (int d = 0; d < D; d++) {
                psf_real *Cd = Y + (size_t)(1 + d) * n + (size_t)t * F;
                for (int f = 0; f < F; f++) Cd[f] = gam[f] * (Cd[f] * sc + C0[f] * ds[d]);
            }
        }
        for (int f = 0; f < F; f++) C0[f] = gam[f] * C0[f] * sc + bet[f];
    }
}
static void psf__layernorm_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int T = nd->rows, F = nd->cols;
    const psf_real *X = PSF__J(c->ws, in), *a = PSF__A(c->ws, nd), *gam = c->params + nd->p_off;
    psf_real *dX = PSF__A(c->ws, in), *nh = c->ws->scratch;
    for (int t = 0; t < T; t++) {
        const psf_real *x = X + (size_t)t * F, *at = a + (size_t)t * F;
        psf_real *dn = nh + F;
        const double mu = psf__sum8(x, F) / F;
        for (int f = 0; f < F; f++) nh[f] = x[f] - mu;
        const double sc = 1 / sqrt(psf__dot8(nh, nh, 1, F) / F + PSF_LN_EPS);
        for (int f = 0; f < F; f++) { nh[f] *= sc; dn[f] = at[f] * gam[f]; }
        const double m1 = psf__sum8(dn, F) / F, m2 = psf__dot8(dn, nh, 1, F) / F;
        if (c->dparams) {
            psf_real *dg = c->dparams + nd->p_off, *db = dg + F;
            for (int f = 0; f < F; f++) { dg[f] += at[f] * nh[f]; db[f] += at[f]; }
        }
        for (int f = 0; f < F; f++) dX[(size_t)t * F + f] += sc * (at[f] * gam[f] - m1 - nh[f] * m2);
    }
}
#define psf__layernorm_sparse psf__sparse_rowwise
static size_t psf__layernorm_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* ds [D], acc [F]; backward:
                                                                                         * nh [F], dn [F] */
    (void)nodes;
    return (size_t)D + 2 * (size_t)nd->cols;
}
static int psf__layernorm(psf_model *m, int in, const char *name) {
    const int k = psf__node(m, PSF_OP_LAYERNORM, in, -1, m->nodes[in].rows, m->nodes[in].cols);
    char nm[40];
    snprintf(nm, sizeof nm, "%s.scale", name);
    psf__pblock(m, k, nm, 1, m->nodes[in].cols, PSF_PB_LN_SCALE);
    snprintf(nm, sizeof nm, "%s.offset", name);
    psf__pblock(m, k, nm, 1, m->nodes[in].cols, PSF_PB_LN_OFFSET);
    return k;
}

#ifdef PSF_INTERNAL_TESTS
static int psf__layernorm_example(psf_model *m, int x) {
    return psf__layernorm(m, psf__linear(m, psf__features_node(m, x), 6, 1, m->sys.n_up, "ex.a"), "ex.ln");
}
#endif

/* ---- ATTN_SCORES: S_h = Q_h K_h^T / sqrt(d_head) per head h (Vaswani et al. 2017, Eq. 1). Bilinear:
 *      S_d = k (Q_d K_0^T + Q_0 K_d^T),  S_L = k (Q_L K_0^T + Q_0 K_L^T + 2 sum_d Q_d K_d^T).
 *      ia = heads H, ib = d_head; Q, K are T x (H d_head); S is (H T) x T.                                 */
/* The jet of head h when Q and K are per-electron (sparse: slice d nonzero only in row r = d / 3, as in the first
 * layer). Then Q_d K_0^T is row r of Q_d against K_0, Q_0 K_d^T is column r, and sum_d Q_d K_d^T is diagonal, entry i
 * summing the slices 3i .. 3i + 2: the rows r of the D slices, gathered, make two D x T products instead of two
 * (D + 1) T x T ones. Every entry is the dense products' sum of its nonzero terms in their order (the gathered
 * products', or psf__gemm_entry's), combined as the dense path combines them, so the bits are the dense path's.
 * The Laplacian slices Q_L, K_L are dense. scratch: 2 T^2 + 2 D T + 2 D d_head reals. */
static void psf__attn_scores_sparse_jet(psf__ctx *c, const psf_node *nd, int h, const psf_real *Q, const psf_real *K,
                                        psf_real *scratch) {
    const int H = nd->ia, dh = nd->ib, T = nd->cols, W = H * dh, D = c->D;
    const size_t nin = PSF__N(&c->nodes[nd->in0]), n = PSF__N(nd);
    const double kap = 1 / sqrt((double)dh);
    psf_real *Sh = PSF__J(c->ws, nd) + (size_t)h * T * T, *tA = scratch, *tB = tA + (size_t)D * T,
             *Qg = tB + (size_t)D * T, *Kg = Qg + (size_t)D * dh, *lA = Kg + (size_t)D * dh, *lB = lA + (size_t)T * T;
    const psf_real *Q0 = Q + h * dh, *K0 = K + h * dh;
    for (int d = 0; d < D; d++) { /* row d / 3 of slice d */
        const size_t from = (size_t)(1 + d) * nin + (size_t)(d / 3) * W + h * dh;
        memcpy(Qg + (size_t)d * dh, Q + from, sizeof(psf_real) * (size_t)dh);
        memcpy(Kg + (size_t)d * dh, K + from, sizeof(psf_real) * (size_t)dh);
    }
    psf__gemm(0, 1, D, T, dh, kap, Qg, dh, K0, W, 0.0, tA, T); /* tA[d, j]: row r of Q_d K_0^T */
    psf__gemm(0, 1, T, D, dh, kap, Q0, W, Kg, dh, 0.0, tB, D); /* tB[i, d]: column r of Q_0 K_d^T */
    for (int d = 0; d < D; d++) {
        const int r = d / 3;
        psf_real *Ss = Sh + (size_t)(1 + d) * n;
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) {
                const psf_real a = i == r ? tA[(size_t)d * T + j] : 0, b = j == r ? tB[(size_t)i * D + d] : 0;
                Ss[i * T + j] = a + b + 0.0;
            }
    }
    const psf_real *QL = Q + (size_t)(D + 1) * nin + h * dh, *KL = K + (size_t)(D + 1) * nin + h * dh;
    psf__gemm(0, 1, T, T, dh, kap, QL, W, K0, W, 0.0, lA, T);
    psf__gemm(0, 1, T, T, dh, kap, Q0, W, KL, W, 0.0, lB, T);
    psf_real *SL = Sh + (size_t)(D + 1) * n;
    for (int i = 0; i < T; i++) {
        psf_real tl = 0; /* 2 kap sum_d Q_d K_d^T, entry (i, i): the terms k = d dh + e of slices d = 3i .. 3i + 2 */
        const int d0 = 3 * i, d1 = 3 * i + 3 < D ? 3 * i + 3 : D;
        if (d1 > d0) tl = psf__gemm_entry(Qg + (size_t)d0 * dh, Kg + (size_t)d0 * dh, d0 * dh, d1 * dh, 2 * kap);
        for (int j = 0; j < T; j++) SL[i * T + j] = lA[i * T + j] + lB[i * T + j] + (i == j ? tl : (psf_real)0);
    }
}
static void psf__attn_scores_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nq = &c->nodes[nd->in0], *nk = &c->nodes[nd->in1];
    const int H = nd->ia, dh = nd->ib, T = nd->cols, W = H * dh, D = c->D, S1 = (D + 1) * T;
    const size_t nin = PSF__N(nq), n = PSF__N(nd);
    const double kap = 1 / sqrt((double)dh);
    const psf_real *Q = PSF__J(c->ws, nq), *K = PSF__J(c->ws, nk);
    psf_real *S = PSF__J(c->ws, nd);
    /* jet scratch: tA = Q_{1..D+1} K_0^T, tB = K_{1..D+1} Q_0^T (the transpose of Q_0 K_s^T: like tA, 6-column,
     * where Q_0 K_{1..D+1}^T would transpose 114 rows of K to pack them), Qc / Kc = [Q_1 .. Q_D] / [K_1 .. K_D]
     * side by side (so that sum_d Q_d K_d^T is one product), tL */
    psf_real *tA = c->ws->scratch, *tB = tA + (size_t)S1 * T, *Qc = tB + (size_t)S1 * T, *Kc = Qc + (size_t)T * D * dh,
             *tL = Kc + (size_t)T * D * dh;
    for (int h = 0; h < H; h++) {
        psf_real *Sh = S + (size_t)h * T * T;
        psf__gemm(0, 1, T, T, dh, kap, Q + h * dh, W, K + h * dh, W, 0.0, Sh, T);
        if (c->nb == 1) continue;
        if (nq->sparse && nk->sparse && T > 1 && dh <= PSF__KC) { /* the first layer: the nonzero terms only */
            psf__attn_scores_sparse_jet(c, nd, h, Q, K, tA);
            continue;
        }
        /* the slices 1..D+1 of Q (and K) are (D+1) T consecutive rows of stride W */
        psf__gemm(0, 1, S1, T, dh, kap, Q + nin + h * dh, W, K + h * dh, W, 0.0, tA, T);
        psf__gemm(0, 1, S1, T, dh, kap, K + nin + h * dh, W, Q + h * dh, W, 0.0, tB, T); /* (Q_0 K_s^T)^T */
        for (int d = 0; d < D; d++)
            for (int i = 0; i < T; i++) {
                const size_t from = (size_t)(1 + d) * nin + (size_t)i * W + h * dh, to = ((size_t)i * D + d) * dh;
                memcpy(Qc + to, Q + from, sizeof(psf_real) * (size_t)dh);
                memcpy(Kc + to, K + from, sizeof(psf_real) * (size_t)dh);
            }
        psf__gemm(0, 1, T, T, D * dh, 2 * kap, Qc, D * dh, Kc, D * dh, 0.0, tL, T);
        for (int sl = 1; sl <= D + 1; sl++) {
            psf_real *Ss = Sh + (size_t)sl * n;
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++)
                    Ss[i * T + j] = tA[((size_t)(sl - 1) * T + i) * T + j] + tB[((size_t)(sl - 1) * T + j) * T + i] +
                                    (sl == D + 1 ? tL[i * T + j] : 0.0);
        }
    }
}
static void psf__attn_scores_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nq = &c->nodes[nd->in0], *nk = &c->nodes[nd->in1];
    const int H = nd->ia, dh = nd->ib, T = nd->cols, W = H * dh;
    const double kap = 1 / sqrt((double)dh);
    const psf_real *Q = PSF__J(c->ws, nq), *K = PSF__J(c->ws, nk), *dS = PSF__A(c->ws, nd);
    psf_real *dQ = PSF__A(c->ws, nq), *dK = PSF__A(c->ws, nk);
    for (int h = 0; h < H; h++) {
        const psf_real *dSh = dS + (size_t)h * T * T;
        psf__gemm(0, 0, T, dh, T, kap, dSh, T, K + h * dh, W, 1.0, dQ + h * dh, W);
        psf__gemm(1, 0, T, dh, T, kap, dSh, T, Q + h * dh, W, 1.0, dK + h * dh, W);
    }
}
#define psf__attn_scores_sparse psf__sparse_none
static size_t psf__attn_scores_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* tA, tB, Qc, Kc, tL */
    const size_t N = (size_t)nd->cols, dh = (size_t)nd->ib;
    const size_t dense = 2 * ((size_t)D + 1) * N * N + 2 * N * (size_t)D * dh + N * N;
    const size_t sparse = 2 * N * N + 2 * (size_t)D * (N + dh); /* psf__attn_scores_sparse_jet */
    (void)nodes;
    return dense > sparse ? dense : sparse;
}
/* S = attention scores of queries q and keys k (nodes N x (H d_head)), (H N) x N. */
static int psf__attn_scores_node(psf_model *m, int q, int k, int heads, int head_dim) {
    const int s = psf__node(m, PSF_OP_ATTN_SCORES, q, k, heads * m->n_elec, m->n_elec);
    m->nodes[s].ia = heads; m->nodes[s].ib = head_dim;
    return s;
}
#ifdef PSF_INTERNAL_TESTS
static int psf__attn_scores_example(psf_model *m, int x) { /* 2 heads of width 3 */
    const int f = psf__features_node(m, x);
    const int q = psf__linear(m, f, 6, 0, m->n_elec, "ex.q"), k = psf__linear(m, f, 6, 0, m->n_elec, "ex.k");
    return psf__attn_scores_node(m, q, k, 2, 3);
}
#endif

/* ---- SOFTMAX over each row: p = exp(s) / sum exp(s). With u_d = s_d - <s_d>_p:
 *      p_d = p u_d;  lap p = p (sum_d u_d^2 + L s - <L s>_p - sum_d <u_d s_d>_p).                          */
static void psf__softmax_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *X = PSF__J(c->ws, &c->nodes[nd->in0]);
    psf_real *Y = PSF__J(c->ws, nd);
    const int R = nd->rows, C = nd->cols, D = c->D;
    const size_t n = PSF__N(nd);
    for (int r = 0; r < R; r++) { /* s - max s, row by row, then every exponential at once */
        const psf_real *x = X + (size_t)r * C;
        psf_real *p = Y + (size_t)r * C, mx = x[0];
        for (int j = 1; j < C; j++) if (x[j] > mx) mx = x[j];
        for (int j = 0; j < C; j++) p[j] = x[j] - mx;
    }
    psf__vexp(Y, Y, (size_t)R * C);
    for (int r = 0; r < R; r++) {
        psf_real *p = Y + (size_t)r * C, z = 0;
        for (int j = 0; j < C; j++) z += p[j];
        for (int j = 0; j < C; j++) p[j] /= z;
        if (c->nb == 1) continue;
        psf_real *yL = Y + (size_t)(D + 1) * n + (size_t)r * C;
        const psf_real *xL = X + (size_t)(D + 1) * n + (size_t)r * C;
        double mL = 0, corr = 0;
        for (int j = 0; j < C; j++) { mL += p[j] * xL[j]; yL[j] = 0; }
        for (int d = 0; d < D; d++) {
            const psf_real *xd = X + (size_t)(1 + d) * n + (size_t)r * C;
            psf_real *yd = Y + (size_t)(1 + d) * n + (size_t)r * C;
            double md = 0;
            for (int j = 0; j < C; j++) md += p[j] * xd[j];
            for (int j = 0; j < C; j++) {
                const double u = xd[j] - md;
                yd[j] = p[j] * u;
                yL[j] += u * u;
                corr += p[j] * u * xd[j];
            }
        }
        for (int j = 0; j < C; j++) yL[j] = p[j] * (yL[j] + xL[j] - mL - corr);
    }
}
static void psf__softmax_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *P = PSF__J(c->ws, nd), *a = PSF__A(c->ws, nd);
    psf_real *dX = PSF__A(c->ws, &c->nodes[nd->in0]);
    const int R = nd->rows, C = nd->cols;
    for (int r = 0; r < R; r++) {
        const psf_real *p = P + (size_t)r * C, *ar = a + (size_t)r * C;
        double dot = 0;
        for (int j = 0; j < C; j++) dot += p[j] * ar[j];
        for (int j = 0; j < C; j++) dX[(size_t)r * C + j] += p[j] * (ar[j] - dot);
    }
}
#define psf__softmax_sparse psf__sparse_none
#define psf__softmax_scratch psf__scratch_none
#ifdef PSF_INTERNAL_TESTS
static int psf__softmax_example(psf_model *m, int x) {
    const int s = psf__attn_scores_example(m, x);
    return psf__node(m, PSF_OP_SOFTMAX, s, -1, m->nodes[s].rows, m->nodes[s].cols);
}
#endif

/* ---- ATTN_MIX: O_h = P_h V_h per head. Bilinear: O_d = P_d V_0 + P_0 V_d; O_L = P_L V_0 + P_0 V_L +
 *      2 sum_d P_d V_d. in0 = P ((H T) x T), in1 = V (T x H d_head); ia = H, ib = d_head.                   */
/* The rest of head h's jet when V is per-electron (sparse: slice d nonzero only in row r = d / 3, as in the first
 * layer), after O_s = P_s V_0: then P_0 V_d is column r of P_0 times row r of V_d, and sum_d P_d V_d sums one term
 * per slice. Each entry is the dense products' sum of its nonzero terms in their order (per PSF__KC block of the
 * Laplacian's D T terms), added as the dense path adds them, so the bits are the dense path's (a product's single
 * nonzero term is a fused multiply-add from 0, and the zero terms after it add + 0). scratch: T d_head reals. */
static void psf__attn_mix_sparse_jet(psf__ctx *c, const psf_node *nd, int h, const psf_real *Ph, size_t npn,
                                     const psf_real *V, psf_real *tL) {
    const int H = nd->ia, dh = nd->ib, T = nd->rows, W = H * dh, D = c->D;
    const size_t n = PSF__N(nd);
    psf_real *O = PSF__J(c->ws, nd);
    for (int d = 0; d < D; d++) { /* O_d += P_0 V_d: only term j = r of each sum over j */
        const int r = d / 3;
        const psf_real *vr = V + (size_t)(1 + d) * n + (size_t)r * W + h * dh;
        for (int i = 0; i < T; i++) {
            psf_real *o = O + (size_t)(1 + d) * n + (size_t)i * W + h * dh;
            const psf_real p = Ph[(size_t)i * T + r];
            for (int e = 0; e < dh; e++) {
                psf_real t = PSF__MAC(p, vr[e], (psf_real)0);
                if (r < T - 1) t += (psf_real)0; /* the zero terms j > r */
                o[e] += t;
            }
        }
    }
    /* O_L += P_0 V_L (dense), then + 2 sum_d P_d V_d with P_d's column r_d against V_d's row r_d */
    psf__gemm(0, 0, T, dh, T, 1.0, Ph, T, V + (size_t)(D + 1) * n + h * dh, W, 0.0, tL, dh);
    psf_real *OL = O + (size_t)(D + 1) * n + h * dh;
    for (int i = 0; i < T; i++)
        for (int e = 0; e < dh; e++) OL[(size_t)i * W + e] += tL[(size_t)i * dh + e];
    for (int i = 0; i < T; i++) { /* the product's term k = d T + r_d, summed per PSF__KC block of k */
        psf_real *acc = tL, *o = OL + (size_t)i * W; /* acc [dh] */
        for (int e = 0; e < dh; e++) acc[e] = 0;
        for (int d = 0; d < D; d++) {
            const int r = d / 3;
            const psf_real p = Ph[(size_t)(1 + d) * npn + (size_t)i * T + r];
            const psf_real *vr = V + (size_t)(1 + d) * n + (size_t)r * W + h * dh;
            for (int e = 0; e < dh; e++) acc[e] = PSF__MAC(p, vr[e], acc[e]);
            if (d == D - 1 || (d * T + r) / PSF__KC != ((d + 1) * T + (d + 1) / 3) / PSF__KC) { /* a block ends */
                for (int e = 0; e < dh; e++) { o[e] += 2.0 * acc[e]; acc[e] = 0; }
            }
        }
    }
}
static void psf__attn_mix_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *np = &c->nodes[nd->in0], *nv = &c->nodes[nd->in1];
    const int H = nd->ia, dh = nd->ib, T = nd->rows, W = H * dh, D = c->D, S1 = (D + 1) * T;
    const size_t npn = PSF__N(np), n = PSF__N(nd);
    const psf_real *P = PSF__J(c->ws, np), *V = PSF__J(c->ws, nv);
    psf_real *O = PSF__J(c->ws, nd);
    /* jet scratch: Ps = P_{1..D+1} stacked, Vc = [V_1 .. V_{D+1}] side by side, tB = P_0 Vc, Pc = [P_1 .. P_D] */
    psf_real *Ps = c->ws->scratch, *Vc = Ps + (size_t)S1 * T, *tB = Vc + (size_t)T * (D + 1) * dh,
             *Pc = tB + (size_t)T * (D + 1) * dh;
    for (int h = 0; h < H; h++) {
        const psf_real *Ph = P + (size_t)h * T * T;
        psf__gemm(0, 0, T, dh, T, 1.0, Ph, T, V + h * dh, W, 0.0, O + h * dh, W);
        if (c->nb == 1) continue;
        for (int sl = 1; sl <= D + 1; sl++)
            memcpy(Ps + (size_t)(sl - 1) * T * T, Ph + (size_t)sl * npn, sizeof(psf_real) * (size_t)T * T);
        /* O_s = P_s V_0 for every slice s: output slices are (D+1) T consecutive rows of stride W */
        psf__gemm(0, 0, S1, dh, T, 1.0, Ps, T, V + h * dh, W, 0.0, O + n + h * dh, W);
        if (nv->sparse && T > 1) { /* the first layer: the nonzero terms only */
            psf__attn_mix_sparse_jet(c, nd, h, Ph, npn, V, tB);
            continue;
        }
        for (int sl = 1; sl <= D + 1; sl++)
            for (int j = 0; j < T; j++)
                memcpy(Vc + (size_t)j * (D + 1) * dh + (size_t)(sl - 1) * dh, V + (size_t)sl * n + (size_t)j * W + h * dh,
                       sizeof(psf_real) * (size_t)dh);
        for (int i = 0; i < T; i++)
            for (int d = 0; d < D; d++)
                memcpy(Pc + (size_t)i * D * T + (size_t)d * T, Ph + (size_t)(1 + d) * npn + (size_t)i * T, sizeof(psf_real) * (size_t)T);
        /* + P_0 V_s */
        psf__gemm(0, 0, T, (D + 1) * dh, T, 1.0, Ph, T, Vc, (D + 1) * dh, 0.0, tB, (D + 1) * dh);
        for (int sl = 1; sl <= D + 1; sl++)
            for (int i = 0; i < T; i++) {
                psf_real *o = O + (size_t)sl * n + (size_t)i * W + h * dh;
                const psf_real *b = tB + (size_t)i * (D + 1) * dh + (size_t)(sl - 1) * dh;
                for (int e = 0; e < dh; e++) o[e] += b[e];
            }
        /* Laplacian: + 2 sum_d P_d V_d = 2 [P_1 .. P_D] [V_1; ..; V_D] (the V slices are D T rows of stride W) */
        psf__gemm(0, 0, T, dh, D * T, 2.0, Pc, D * T, V + n + h * dh, W, 1.0, O + (size_t)(D + 1) * n + h * dh, W);
    }
}
static void psf__attn_mix_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *np = &c->nodes[nd->in0], *nv = &c->nodes[nd->in1];
    const int H = nd->ia, dh = nd->ib, T = nd->rows, W = H * dh;
    const psf_real *P = PSF__J(c->ws, np), *V = PSF__J(c->ws, nv), *dO = PSF__A(c->ws, nd);
    psf_real *dP = PSF__A(c->ws, np), *dV = PSF__A(c->ws, nv);
    for (int h = 0; h < H; h++) {
        psf__gemm(0, 1, T, T, dh, 1.0, dO + h * dh, W, V + h * dh, W, 1.0, dP + (size_t)h * T * T, T);
        psf__gemm(1, 0, T, dh, T, 1.0, P + (size_t)h * T * T, T, dO + h * dh, W, 1.0, dV + h * dh, W);
    }
}
#define psf__attn_mix_sparse psf__sparse_none
static size_t psf__attn_mix_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* Ps, Vc, tB, Pc */
    const size_t N = (size_t)nd->rows, dh = (size_t)nd->ib;
    (void)nodes;
    return ((size_t)D + 1) * N * N + 2 * N * ((size_t)D + 1) * dh + (size_t)D * N * N;
}
/* O = attention weights p ((H N) x N) applied to values v (N x (H d_head)), N x (H d_head). */
static int psf__attn_mix_node(psf_model *m, int p, int v, int heads, int head_dim) {
    const int o = psf__node(m, PSF_OP_ATTN_MIX, p, v, m->n_elec, heads * head_dim);
    m->nodes[o].ia = heads; m->nodes[o].ib = head_dim;
    return o;
}
#ifdef PSF_INTERNAL_TESTS
static int psf__attn_mix_example(psf_model *m, int x) { /* values from the features the queries read */
    const int p = psf__softmax_example(m, x), q = m->nodes[m->nodes[p].in0].in0, f = m->nodes[q].in0;
    return psf__attn_mix_node(m, p, psf__linear(m, f, 6, 0, m->n_elec, "ex.v"), 2, 3);
}
#endif

/* ---- ENVELOPE: M[k,i,o] = Phi[i, kF+o] e_{s(i)}[i, kF+o], e[i,q] = sum_I pi_{I,q} exp(-sigma_{I,q} |r_iI|)
 *      (isotropic exponential envelope, FermiNet PRR 2020 Eq. 6; separate pi, sigma per spin channel), for K
 *      blocks of F orbital columns each (F = N for the determinant head; the Pfaffian head's F may differ).
 *      The envelope depends on electron i only: grad_i e = sum_I -pi sigma exp(-sigma rho) r/rho,
 *      lap e = sum_I pi exp(-sigma rho) (sigma^2 - 2 sigma/rho). Params: [pi_0, sigma_0, pi_1, sigma_1], each
 *      A x (K F). ia = K; the node is (K N) x F. in0 = Phi (N x K F).                                     */
static void psf__envelope_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_system *sys = c->sys;
    const psf_node *nphi = &c->nodes[nd->in0];
    const int K = nd->ia, N = c->N, F = nd->cols, KF = K * F, A = sys->n_atoms, D = c->D;
    const size_t np = PSF__N(nphi), n = PSF__N(nd), blk = (size_t)A * KF;
    const psf_real *Phi = PSF__J(c->ws, nphi);
    psf_real *M = PSF__J(c->ws, nd), *e = c->ws->scratch, *ge = e + KF, *le = ge + 3 * (size_t)KF, *ex = le + KF;
    if (c->nb > 1) memset(M + n, 0, sizeof(psf_real) * n * (size_t)(D + 1));
    for (int i = 0; i < N; i++) {
        const int sp = i < sys->n_up ? 0 : 1;
        const psf_real *pi = c->params + nd->p_off + 2 * sp * blk, *sg = pi + blk;
        for (int o = 0; o < KF; o++) { e[o] = 0; ge[o] = ge[KF + o] = ge[2 * KF + o] = 0; le[o] = 0; }
        double rv[PSF_MAX_ATOMS][3], rh[PSF_MAX_ATOMS]; /* r_iI and |r_iI| */
        for (int at = 0; at < A; at++) { /* ex = exp(-sigma rho) for every atom and orbital at once */
            rh[at] = psf__dist(sys->R[at], c->x + 3 * i, rv[at]);
            for (int o = 0; o < KF; o++) ex[(size_t)at * KF + o] = -sg[(size_t)at * KF + o] * rh[at];
        }
        psf__vexp(ex, ex, blk);
        for (int at = 0; at < A; at++) {
            const double *r = rv[at], rho = rh[at];
            for (int o = 0; o < KF; o++) {
                const double s = sg[(size_t)at * KF + o], t = pi[(size_t)at * KF + o] * ex[(size_t)at * KF + o];
                e[o] += t;
                if (c->nb > 1) {
                    for (int k = 0; k < 3; k++) ge[k * KF + o] += -s * t * r[k] / rho;
                    le[o] += t * (s * s - 2 * s / rho);
                }
            }
        }
        for (int o = 0; o < KF; o++) {
            const size_t q = (size_t)(o / F) * N * F + (size_t)i * F + (o % F), pidx = (size_t)i * KF + o;
            M[q] = Phi[pidx] * e[o];
            if (c->nb == 1) continue;
            double lap = Phi[(size_t)(D + 1) * np + pidx] * e[o] + Phi[pidx] * le[o];
            for (int d = 0; d < D; d++) M[(size_t)(1 + d) * n + q] = Phi[(size_t)(1 + d) * np + pidx] * e[o];
            for (int k = 0; k < 3; k++) {
                const int d = 3 * i + k;
                M[(size_t)(1 + d) * n + q] += Phi[pidx] * ge[k * KF + o];
                lap += 2 * Phi[(size_t)(1 + d) * np + pidx] * ge[k * KF + o];
            }
            M[(size_t)(D + 1) * n + q] = lap;
        }
    }
}
static void psf__envelope_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_system *sys = c->sys;
    const psf_node *nphi = &c->nodes[nd->in0];
    const int K = nd->ia, N = c->N, F = nd->cols, KF = K * F, A = sys->n_atoms;
    const size_t blk = (size_t)A * KF;
    const psf_real *Phi = PSF__J(c->ws, nphi), *aM = PSF__A(c->ws, nd);
    psf_real *dPhi = PSF__A(c->ws, nphi), *exs = c->ws->scratch + 5 * (size_t)KF; /* exp(-sigma rho) [A x KF] */
    for (int i = 0; i < N; i++) {
        const int sp = i < sys->n_up ? 0 : 1;
        const size_t po = (size_t)nd->p_off + 2 * sp * blk;
        const psf_real *pi = c->params + po, *sg = pi + blk;
        double rv[PSF_MAX_ATOMS][3], rh[PSF_MAX_ATOMS]; /* r_iI and |r_iI| */
        for (int at = 0; at < A; at++) { /* exp(-sigma rho) for every atom and orbital at once */
            rh[at] = psf__dist(sys->R[at], c->x + 3 * i, rv[at]);
            for (int o = 0; o < KF; o++) exs[(size_t)at * KF + o] = -sg[(size_t)at * KF + o] * rh[at];
        }
        psf__vexp(exs, exs, blk);
        for (int at = 0; at < A; at++) {
            const double *r = rv[at], rho = rh[at];
            for (int o = 0; o < KF; o++) {
                const size_t q = (size_t)(o / F) * N * F + (size_t)i * F + (o % F), pidx = (size_t)i * KF + o;
                const double s = sg[(size_t)at * KF + o], ex = exs[(size_t)at * KF + o], t = pi[(size_t)at * KF + o] * ex;
                const double w = aM[q] * Phi[pidx];
                dPhi[pidx] += aM[q] * t;
                if (c->dparams) {
                    c->dparams[po + (size_t)at * KF + o] += w * ex;
                    c->dparams[po + blk + (size_t)at * KF + o] += -w * t * rho;
                }
                for (int k = 0; k < 3; k++) c->ws->dx[3 * i + k] += w * (-s * t * r[k] / rho);
            }
        }
    }
}
#define psf__envelope_sparse psf__sparse_none
static size_t psf__envelope_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* e, grad e [3], lap e,
                                                                                            exp(-sigma rho) [A] */
    (void)nodes; (void)D;
    return (5 + PSF_MAX_ATOMS) * (size_t)nd->ia * (size_t)nd->cols;
}
/* Envelopes on the orbital projection phi (N x K F): K blocks of N x F orbital matrices ((K N) x F), parameters
 * per spin channel. */
/* Its parameter blocks are <prefix>_up.pi, <prefix>_up.sigma, <prefix>_down.pi, <prefix>_down.sigma. */
static int psf__envelope_named(psf_model *m, int phi, int K, const char *prefix) {
    const int N = m->n_elec, A = m->sys.n_atoms, KF = m->nodes[phi].cols, F = KF / K;
    PSF_ASSERT(m->too_large || F * K == KF); /* a model too large is refused unused */
    const int env = psf__node(m, PSF_OP_ENVELOPE, phi, -1, K * N, F);
    m->nodes[env].ia = K;
    static const char *const part[4] = {"up.pi", "up.sigma", "down.pi", "down.sigma"};
    for (int q = 0; q < 4; q++) {
        char nm[40];
        snprintf(nm, sizeof nm, "%s_%s", prefix, part[q]);
        psf__pblock(m, env, nm, A, KF, q & 1 ? PSF_PB_ENV_SIGMA : PSF_PB_ENV_PI);
    }
    return env;
}
static int psf__envelope_node(psf_model *m, int phi, int K) { return psf__envelope_named(m, phi, K, "env"); }
#ifdef PSF_INTERNAL_TESTS
static int psf__envelope_example(psf_model *m, int x) { /* 2 determinants */
    const int h = psf__linear(m, psf__features_node(m, x), 5, 1, m->n_elec, "ex.a");
    return psf__envelope_node(m, psf__linear(m, h, 2 * m->n_elec, 0, m->sys.n_up, "ex.orb"), 2);
}
#endif

/* ---- LOGDET: log|psi_det| = log|sum_k det M_k| with sign (signed log-sum-exp). Per determinant, A = M^{-1}:
 *      d ld = tr(A M_d);  lap ld = tr(A M_L) - sum_d tr(A M_d A M_d)  (Jacobi's formula and its derivative).
 *      Combined with w_k = sign_k exp(ld_k) / psi_det:  grad = sum_k w_k grad_k,
 *      lap = sum_k w_k (lap_k + |grad_k|^2) - |grad|^2.  Backward: dM_k = w_k A_k^T. A singular determinant
 *      (exact zero pivot) has sign 0 and weight 0; if all are, log|psi| = -inf and sign 0.                     */
static double psf__logdet_combine(int K, const double *ld, const int *sg, double *w, int *sign) {
    double mx = -INFINITY, S = 0;
    for (int k = 0; k < K; k++) if (sg[k] && ld[k] > mx) mx = ld[k];
    if (mx == -INFINITY) { for (int k = 0; k < K; k++) w[k] = 0; *sign = 0; return -INFINITY; }
    for (int k = 0; k < K; k++) { w[k] = sg[k] ? sg[k] * exp(ld[k] - mx) : 0.0; S += w[k]; }
    if (S == 0.0) { for (int k = 0; k < K; k++) w[k] = 0; *sign = 0; return -INFINITY; }
    for (int k = 0; k < K; k++) w[k] /= S;
    *sign = S > 0 ? 1 : -1;
    return mx + log(fabs(S));
}
/* The jet of y = log|sum_k s_k exp(l_k)| from each term's jet jk[k] = (grad l_k [D], lap l_k) and the weights
 * w_k = s_k exp(l_k - y) * sign: grad y = sum_k w_k grad l_k, lap y = sum_k w_k (lap l_k + |grad l_k|^2) - |grad y|^2.
 * Shared by LOGDET and LOGPF. */
static void psf__logsum_jet(int K, int D, const double *w, const psf_real *jk, psf_real *y) {
    for (int d = 0; d <= D; d++) y[1 + d] = 0;
    double g2 = 0;
    for (int k = 0; k < K; k++) {
        if (w[k] == 0) continue;
        const psf_real *jg = jk + (size_t)k * (D + 1);
        double gk2 = 0;
        for (int d = 0; d < D; d++) { y[1 + d] += w[k] * jg[d]; gk2 += jg[d] * jg[d]; }
        y[1 + D] += w[k] * (jg[D] + gk2);
    }
    for (int d = 0; d < D; d++) g2 += y[1 + d] * y[1 + d];
    y[1 + D] -= g2;
}
static void psf__logdet_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int K = nd->ia, N = in->cols, D = c->D;
    const size_t nN = (size_t)N * N, nin = PSF__N(in);
    const psf_real *M = PSF__J(c->ws, in);
    psf_real *y = PSF__J(c->ws, nd);
    /* scratch: lu [N^2], inv [N^2], B [N^2], per-determinant jets [K (D+1)] */
    psf_real *lu = c->ws->scratch, *inv = lu + nN, *B = inv + nN, *jk = B + nN;
    double ld[PSF_MAX_DETS], w[PSF_MAX_DETS];
    int sg[PSF_MAX_DETS], piv[PSF_MAX_ELEC];
    PSF_ASSERT(K <= PSF_MAX_DETS && N <= PSF_MAX_ELEC);
    for (int k = 0; k < K; k++) {
        memcpy(lu, M + (size_t)k * nN, sizeof(psf_real) * nN);
        sg[k] = psf__lu(N, lu, piv, &ld[k]);
        if (c->nb == 1 || !sg[k]) continue;
        psf__lu_inverse(N, lu, piv, inv);
        psf_real *jg = jk + (size_t)k * (D + 1); /* grad [D], lap */
        double lap = 0;
        for (int i = 0; i < N; i++) for (int j = 0; j < N; j++)
            lap += inv[(size_t)j * N + i] * M[(size_t)(D + 1) * nin + (size_t)k * nN + (size_t)i * N + j];
        for (int d = 0; d < D; d++) {
            psf_real *Bd = B;
            psf__gemm(0, 0, N, N, N, 1.0, inv, N, M + (size_t)(1 + d) * nin + (size_t)k * nN, N, 0.0, Bd, N);
            double tr = 0, tr2 = 0;
            for (int i = 0; i < N; i++) {
                tr += Bd[(size_t)i * N + i];
                for (int j = 0; j < N; j++) tr2 += Bd[(size_t)i * N + j] * Bd[(size_t)j * N + i];
            }
            jg[d] = tr;
            lap -= tr2;
        }
        jg[D] = lap;
    }
    y[0] = psf__logdet_combine(K, ld, sg, w, &c->ws->sign);
    if (c->nb == 1) return;
    if (c->ws->sign == 0) { for (int d = 0; d <= D; d++) y[1 + d] = 0; return; }
    psf__logsum_jet(K, D, w, jk, y);
}
static void psf__logdet_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int K = nd->ia, N = in->cols;
    const size_t nN = (size_t)N * N;
    const psf_real *M = PSF__J(c->ws, in);
    /* scratch: inv [N^2], then the K LU factorisations (kept from the weights to the inverses) */
    psf_real *dM = PSF__A(c->ws, in), *inv = c->ws->scratch, *lus = inv + nN;
    const double a = PSF__A(c->ws, nd)[0];
    double ld[PSF_MAX_DETS] = {0}, w[PSF_MAX_DETS];
    int sg[PSF_MAX_DETS] = {0}, sign;
    int *piv = c->ws->iscratch; /* [K N] */
    for (int k = 0; k < K; k++) {
        memcpy(lus + (size_t)k * nN, M + (size_t)k * nN, sizeof(psf_real) * nN);
        sg[k] = psf__lu(N, lus + (size_t)k * nN, piv + (size_t)k * N, &ld[k]);
    }
    psf__logdet_combine(K, ld, sg, w, &sign);
    for (int k = 0; k < K; k++) {
        if (w[k] == 0) continue;
        psf__lu_inverse(N, lus + (size_t)k * nN, piv + (size_t)k * N, inv);
        for (int i = 0; i < N; i++) for (int j = 0; j < N; j++)
            dM[(size_t)k * nN + (size_t)i * N + j] += a * w[k] * inv[(size_t)j * N + i];
    }
}
#define psf__logdet_sparse psf__sparse_none
static size_t psf__logdet_scratch(const psf_node *nodes, const psf_node *nd, int D) {
    /* forward: lu, inv, B, per-determinant jets; backward: inv and K LU factors */
    const size_t N = (size_t)nodes[nd->in0].cols, K = (size_t)nd->ia, fwd = 3 * N * N + K * ((size_t)D + 1);
    return (K + 1) * N * N > fwd ? (K + 1) * N * N : fwd;
}
static int psf__logdet_node(psf_model *m, int orbitals) {
    const int ld = psf__node(m, PSF_OP_LOGDET, orbitals, -1, 1, 1);
    m->nodes[ld].ia = m->nodes[orbitals].ia;
    return ld;
}
#ifdef PSF_INTERNAL_TESTS
static int psf__logdet_example(psf_model *m, int x) { return psf__logdet_node(m, psf__envelope_example(m, x)); }
#endif

/* ---- JASTROW: J = sum_{i<j} f(r_ij), f(r) = -c a^2 / (a + r), c = 1/4 (same spin, a = a_par) or 1/2
 *      (opposite, a = a_anti): f'(0) = c is the Kato cusp (FermiNet simple_ee Jastrow; von Glehn et al. 2023).
 *      grad_i f = f'(r) (x_i - x_j)/r; the Laplacian over both electrons is 2 (f'' + 2 f'/r).
 *      Optional e-n term (ib = 1; an extension): + sum_{i,I} u(rho_iI), u(rho) = -Z_I b_I rho / (b_I + rho),
 *      u'(0) = -Z_I (Kato's nuclear cusp), u -> -Z_I b_I far away; lap_i u = u'' + 2 u'/rho.
 *      ia = 1 if the e-e part is on. Params: [a_par, a_anti] then [b_0 .. b_{A-1}] if ib.                    */
static double psf__en_cusp(const psf__ctx *c, const psf_real *par, psf_real *grad, double *lap,
                           psf_real *dx, double a0, psf_real *dpar) {
    const psf_system *sys = c->sys;
    double J = 0;
    for (int i = 0; i < c->N; i++)
        for (int at = 0; at < sys->n_atoms; at++) {
            double r[3];
            const double rho = psf__dist(sys->R[at], c->x + 3 * i, r), b = par[2 + at], Z = sys->Z[at];
            const double u1 = -Z * b * b / ((b + rho) * (b + rho)), u2 = -2 * u1 / (b + rho);
            J += -Z * b * rho / (b + rho);
            if (grad) { for (int k = 0; k < 3; k++) grad[3 * i + k] += u1 * r[k] / rho; *lap += u2 + 2 * u1 / rho; }
            if (dx) for (int k = 0; k < 3; k++) dx[3 * i + k] += a0 * u1 * r[k] / rho;
            if (dpar) dpar[2 + at] += a0 * (-Z * rho * rho / ((b + rho) * (b + rho)));
        }
    return J;
}
static int psf__jastrow_pair(const psf__ctx *c, int i, int j, double *cusp) { /* returns the parameter index */
    const int same = (i < c->sys->n_up) == (j < c->sys->n_up);
    *cusp = same ? 0.25 : 0.5;
    return same ? 0 : 1;
}
/* The e-e part over all pairs: value; if grad, adds the gradient [D] and the Laplacian into *lap; if dx, adds
 * a0 times the gradient into dx and, if dpar, a0 d J / d a into dpar[0..1]. */
static double psf__ee_jastrow(const psf__ctx *c, const psf_real *par, psf_real *grad, double *lap,
                              psf_real *dx, double a0, psf_real *dpar) {
    double J = 0;
    for (int i = 0; i < c->N; i++)
        for (int j = i + 1; j < c->N; j++) {
            double cu, r[3];
            const int ai = psf__jastrow_pair(c, i, j, &cu);
            const double a = par[ai];
            for (int k = 0; k < 3; k++) r[k] = c->x[3 * i + k] - c->x[3 * j + k];
            double rr = sqrt(r[0] * r[0] + r[1] * r[1] + r[2] * r[2]);
            if (rr < 1e-12) rr = 1e-12;
            J += -cu * a * a / (a + rr);
            const double f1 = cu * a * a / ((a + rr) * (a + rr)), f2 = -2 * f1 / (a + rr);
            if (grad) {
                for (int k = 0; k < 3; k++) { grad[3 * i + k] += f1 * r[k] / rr; grad[3 * j + k] -= f1 * r[k] / rr; }
                *lap += 2 * (f2 + 2 * f1 / rr);
            }
            if (dx) for (int k = 0; k < 3; k++) { dx[3 * i + k] += a0 * f1 * r[k] / rr; dx[3 * j + k] -= a0 * f1 * r[k] / rr; }
            if (dpar) dpar[ai] += a0 * (-cu * a * (a + 2 * rr) / ((a + rr) * (a + rr)));
        }
    return J;
}
static void psf__jastrow_fwd(psf__ctx *c, const psf_node *nd) {
    const int D = c->D;
    const psf_real *par = c->params + nd->p_off;
    psf_real *y = PSF__J(c->ws, nd);
    double J = 0, lap = 0;
    if (c->nb > 1) for (int d = 0; d <= D; d++) y[1 + d] = 0;
    if (nd->ib) J += psf__en_cusp(c, par, c->nb > 1 ? y + 1 : NULL, &lap, NULL, 0, NULL);
    if (nd->ia) J += psf__ee_jastrow(c, par, c->nb > 1 ? y + 1 : NULL, &lap, NULL, 0, NULL);
    y[0] = J;
    if (c->nb > 1) y[1 + D] = lap;
}
static void psf__jastrow_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_real *par = c->params + nd->p_off;
    const double a0 = PSF__A(c->ws, nd)[0];
    psf_real *dpar = c->dparams ? c->dparams + nd->p_off : NULL;
    if (nd->ib) psf__en_cusp(c, par, NULL, NULL, c->ws->dx, a0, dpar);
    if (nd->ia) psf__ee_jastrow(c, par, NULL, NULL, c->ws->dx, a0, dpar);
}
#define psf__jastrow_sparse psf__sparse_none
#define psf__jastrow_scratch psf__scratch_none
/* The Jastrow on the coordinates x: the e-e part if ee, the e-n cusp term if en. */
static int psf__jastrow_node(psf_model *m, int x, int ee, int en) {
    const int j = psf__node(m, PSF_OP_JASTROW, x, -1, 1, 1);
    m->nodes[j].ia = ee; m->nodes[j].ib = en;
    psf__pblock(m, j, "jastrow.alpha", 1, 2, PSF_PB_JASTROW);
    if (en) psf__pblock(m, j, "jastrow.en_b", 1, m->sys.n_atoms, PSF_PB_JASTROW);
    return j;
}
#ifdef PSF_INTERNAL_TESTS
static int psf__jastrow_example(psf_model *m, int x) { return psf__jastrow_node(m, x, 1, 1); }
#endif

/* ---- PAIR: K skew-symmetric pair matrices Y_k = H_k (W_k - W_k^T) H_k^T of per-electron features H_k (N x F),
 *      the orbital pairing of a neural Pfaffian, Pf(Phi A Phi^T) with a learned skew A (Gao & Günnemann, "Neural
 *      Pfaffians", NeurIPS 2024, arXiv:2405.14762). With A = W - W^T and G_s = H_s A for every slice s:
 *        Y_0 = (Z_0 - Z_0^T) / 2,  Y_d = Z_d - Z_d^T  with Z_s = G_s H_0^T  (H_0 A H_d^T = -(H_d A H_0^T)^T, A
 *        skew; Z_0 is skew up to rounding, and the half-difference makes the value exactly skew),
 *        Y_L = Z_L - Z_L^T + 2 sum_d G_d H_d^T                                (the product rule twice).
 *      Border (ib = 1, for odd N): H_k has one more column chi_k (a single-particle orbital) and Y_k is
 *      (N+1) x (N+1), [[H A H^T, chi], [-chi^T, 0]], so that its order N + 1 is even; the border is linear in
 *      chi, so every slice of it is the same slice of chi.
 *      Backward (per block, Ybar the adjoint of the full matrix): H-bar = (Ybar^T - Ybar) H A,
 *      W-bar = A-bar - A-bar^T with A-bar = H^T Ybar H, chi-bar_i = Ybar_{i,N} - Ybar_{N,i}.
 *      ia = K, ib = border. Params: W_k [F x F] for k < K. in0 = H ((K N) x (F + ib)); the node is
 *      (K n) x n, n = N + ib.                                                                                 */
static void psf__pair_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nh = &c->nodes[nd->in0];
    const int K = nd->ia, bd = nd->ib, N = nh->rows / K, Fc = nh->cols, F = Fc - bd, n = N + bd, D = c->D;
    const size_t nin = PSF__N(nh), nout = PSF__N(nd), nn = (size_t)n * n, NF = (size_t)N * F;
    const psf_real *H = PSF__J(c->ws, nh);
    psf_real *Y = PSF__J(c->ws, nd), *A = c->ws->scratch, *G = A + (size_t)F * F, *Z = G + (size_t)c->nb * NF;
    for (int k = 0; k < K; k++) {
        const psf_real *W = c->params + nd->p_off + (size_t)k * F * F, *Hk = H + (size_t)k * N * Fc;
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++) A[(size_t)i * F + j] = W[(size_t)i * F + j] - W[(size_t)j * F + i];
        for (int s = 0; s < c->nb; s++) /* G_s = H_s A */
            psf__gemm(0, 0, N, F, F, 1.0, Hk + (size_t)s * nin, Fc, A, F, 0.0, G + (size_t)s * NF, F);
        for (int s = 0; s < c->nb; s++) {
            psf__gemm(0, 1, N, N, F, 1.0, G + (size_t)s * NF, F, Hk, Fc, 0.0, Z, N); /* Z_s = G_s H_0^T */
            psf_real *Ys = Y + (size_t)s * nout + (size_t)k * nn;
            const double f = s == 0 ? 0.5 : 1.0;
            for (int i = 0; i < N; i++)
                for (int j = 0; j < N; j++) Ys[(size_t)i * n + j] = f * (Z[(size_t)i * N + j] - Z[(size_t)j * N + i]);
            if (!bd) continue;
            const psf_real *chi = Hk + (size_t)s * nin + F;
            for (int i = 0; i < N; i++) { Ys[(size_t)i * n + N] = chi[(size_t)i * Fc]; Ys[(size_t)N * n + i] = -chi[(size_t)i * Fc]; }
            Ys[(size_t)N * n + N] = 0;
        }
        if (c->nb == 1) continue;
        for (int d = 1; d <= D; d++) /* Y_L += 2 G_d H_d^T */
            psf__gemm(0, 1, N, N, F, 2.0, G + (size_t)d * NF, F, Hk + (size_t)d * nin, Fc, 1.0,
                      Y + (size_t)(D + 1) * nout + (size_t)k * nn, n);
    }
}
static void psf__pair_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nh = &c->nodes[nd->in0];
    const int K = nd->ia, bd = nd->ib, N = nh->rows / K, Fc = nh->cols, F = Fc - bd, n = N + bd;
    const size_t nn = (size_t)n * n;
    const psf_real *H = PSF__J(c->ws, nh), *Ybar = PSF__A(c->ws, nd);
    psf_real *Hbar = PSF__A(c->ws, nh), *A = c->ws->scratch, *S = A + (size_t)F * F, *T = S + (size_t)N * N;
    for (int k = 0; k < K; k++) {
        const psf_real *W = c->params + nd->p_off + (size_t)k * F * F, *Hk = H + (size_t)k * N * Fc;
        const psf_real *Yb = Ybar + (size_t)k * nn;
        psf_real *Hb = Hbar + (size_t)k * N * Fc;
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++) A[(size_t)i * F + j] = W[(size_t)i * F + j] - W[(size_t)j * F + i];
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) S[(size_t)i * N + j] = Yb[(size_t)j * n + i] - Yb[(size_t)i * n + j];
        psf__gemm(0, 0, N, F, F, 1.0, Hk, Fc, A, F, 0.0, T, F);  /* T = H A          */
        psf__gemm(0, 0, N, F, N, 1.0, S, N, T, F, 1.0, Hb, Fc); /* H-bar += S H A   */
        if (bd)
            for (int i = 0; i < N; i++) Hb[(size_t)i * Fc + F] += Yb[(size_t)i * n + N] - Yb[(size_t)N * n + i];
        if (!c->dparams) continue;
        psf__gemm(0, 0, N, F, N, 1.0, Yb, n, Hk, Fc, 0.0, T, F); /* T = Ybar H       */
        psf__gemm(1, 0, F, F, N, 1.0, Hk, Fc, T, F, 0.0, A, F);  /* A-bar = H^T Ybar H */
        psf_real *Wb = c->dparams + nd->p_off + (size_t)k * F * F;
        for (int i = 0; i < F; i++)
            for (int j = 0; j < F; j++) Wb[(size_t)i * F + j] += A[(size_t)i * F + j] - A[(size_t)j * F + i];
    }
}
#define psf__pair_sparse psf__sparse_none
static size_t psf__pair_scratch(const psf_node *nodes, const psf_node *nd, int D) { /* A, G (all slices), Z | A, S, T */
    const size_t N = (size_t)nodes[nd->in0].rows / (size_t)nd->ia, F = (size_t)(nodes[nd->in0].cols - nd->ib);
    const size_t fwd = F * F + ((size_t)D + 2) * N * F + N * N, bwd = F * F + N * N + N * F;
    return fwd > bwd ? fwd : bwd;
}
/* K pair matrices of the features h ((K N) x (F + border)); registers W_k [F x F] (name.w, or name<k>.w when
 * K > 1). border = 1 borders each with h's last column (odd N). */
static int psf__pair_node(psf_model *m, int h, int K, int border, const char *name) {
    const int N = m->n_elec, n = N + border, F = m->nodes[h].cols - border;
    PSF_ASSERT(m->too_large || (m->nodes[h].rows == K * N && F >= 1));
    const int k = psf__node(m, PSF_OP_PAIR, h, -1, K * n, n);
    char nm[40];
    m->nodes[k].ia = K; m->nodes[k].ib = border;
    for (int b = 0; b < K; b++) {
        snprintf(nm, sizeof nm, K > 1 ? "%s%d.w" : "%s.w", name, b);
        psf__pblock(m, k, nm, F, F, PSF_PB_WEIGHT);
    }
    return k;
}
#ifdef PSF_INTERNAL_TESTS
/* Two bordered pair matrices (the odd-N form) of enveloped features with F = N + 2 != N orbital columns. */
static int psf__pair_example(psf_model *m, int x) {
    const int F = m->n_elec + 2, h = psf__linear(m, psf__features_node(m, x), 5, 1, m->sys.n_up, "ex.a");
    const int phi = psf__linear(m, h, 2 * (F + 1), 0, m->sys.n_up, "ex.orb");
    return psf__pair_node(m, psf__envelope_node(m, phi, 2), 2, 1, "ex.pair");
}
#endif

/* ---- PAIRSUM: the first layer of a pair network on all ordered pairs (i, j), i, j < N:
 *      Z[i N + j, q] = A[i, q] + A[j, c + q] for q < c, from A = [U V] (N x 2c; U = h W_u, V = h W_v, each with
 *      the weights of its electron's spin channel), so that Z = U_i + V_j is the pre-activation of
 *      nu(h_i, h_j) without forming the N^2 concatenated pairs. Linear: every slice (value, gradient, Laplacian)
 *      maps the same way. Backward: U-bar_i = sum_j Z-bar_ij, V-bar_j = sum_i Z-bar_ij. ia = c; the node is
 *      (N N) x c.                                                                                            */
static void psf__pairsum_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int N = in->rows, cc = nd->ia;
    const size_t nin = PSF__N(in), nout = PSF__N(nd);
    for (int s = 0; s < c->nb; s++) {
        const psf_real *A = PSF__J(c->ws, in) + (size_t)s * nin;
        psf_real *Z = PSF__J(c->ws, nd) + (size_t)s * nout;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const psf_real *u = A + (size_t)i * 2 * cc, *v = A + (size_t)j * 2 * cc + cc;
                psf_real *z = Z + ((size_t)i * N + j) * cc;
                for (int q = 0; q < cc; q++) z[q] = u[q] + v[q];
            }
    }
}
static void psf__pairsum_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int N = in->rows, cc = nd->ia;
    const psf_real *Zb = PSF__A(c->ws, nd);
    psf_real *Ab = PSF__A(c->ws, in);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            const psf_real *z = Zb + ((size_t)i * N + j) * cc;
            psf_real *u = Ab + (size_t)i * 2 * cc, *v = Ab + (size_t)j * 2 * cc + cc;
            for (int q = 0; q < cc; q++) { u[q] += z[q]; v[q] += z[q]; }
        }
}
#define psf__pairsum_sparse psf__sparse_none
#define psf__pairsum_scratch psf__scratch_none
/* Z ((N N) x c) from a = [U V] (N x 2c). */
static int psf__pairsum_node(psf_model *m, int a) {
    const int N = m->nodes[a].rows, cc = m->nodes[a].cols / 2;
    PSF_ASSERT(m->too_large || (m->nodes[a].cols == 2 * cc && cc >= 1));
    const int z = psf__node(m, PSF_OP_PAIRSUM, a, -1, N * N, cc);
    m->nodes[z].ia = cc;
    return z;
}
#ifdef PSF_INTERNAL_TESTS
static int psf__pairsum_example(psf_model *m, int x) { /* U, V from a dense per-spin projection */
    const int h = psf__linear(m, psf__features_node(m, x), 5, 1, m->n_elec, "ex.a");
    return psf__pairsum_node(m, psf__linear(m, psf__node(m, PSF_OP_TANH, h, -1, m->n_elec, 5), 6, 1, m->sys.n_up, "ex.uv"));
}
#endif

/* ---- SKEW: K skew pair matrices from a pair network's outputs, the neural Pfaffian's pairing orbital
 *      phi(x_i, x_j) = nu(x_i, x_j) - nu(x_j, x_i) (Kim et al., Commun. Phys. 7, 148 (2024)) times envelopes:
 *        Y_k[i, j] = a_ij e_k(i) e_k(j),  a_ij = Nu[i N + j, k] - Nu[j N + i, k]      (i, j < N),
 *      with e_k(i) the first column of E (an enveloped per-electron factor, so that psi decays). a_ij = -a_ji and
 *      e_i e_j = e_j e_i in floating point, so the value is exactly skew and its diagonal 0. Jet, per entry, with
 *      g = e_i e_j and g_d = e_i,d e_j + e_i e_j,d:
 *        Y_d = a_d g + a g_d,   Y_L = a_L g + a (e_i,L e_j + e_i e_j,L + 2 sum_d e_i,d e_j,d) + 2 sum_d a_d g_d.
 *      Border (ib = 1, odd N): Y_k is (N+1) x (N+1) with Y[i, N] = chi_k(i) = -Y[N, i], Y[N, N] = 0, in every
 *      slice, chi_k(i) the second column of E (a single-particle orbital) or 0 when E has one column (the border
 *      then comes from another summand, as in the BILINEAR_MLP form).
 *      Backward (Y-bar per block): Nu-bar[i N + j, k] += Y-bar_ij g - Y-bar_ji g, E-bar_i += sum_j Y-bar_ij a_ij e_j
 *      + sum_j Y-bar_ji a_ji e_j, chi-bar_i = Y-bar[i, N] - Y-bar[N, i]. ia = K, ib = border. in0 = Nu
 *      ((N N) x K), in1 = E ((K N) x (1 + ib), or (K N) x 1); the node is (K n) x n, n = N + ib.              */
static void psf__skew_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nu = &c->nodes[nd->in0], *ne = &c->nodes[nd->in1];
    const int K = nd->ia, bd = nd->ib, N = c->N, n = N + bd, D = c->D, ec = ne->cols;
    const size_t nnu = PSF__N(nu), ne_ = PSF__N(ne), nout = PSF__N(nd), nn = (size_t)n * n;
    const psf_real *V = PSF__J(c->ws, nu), *E = PSF__J(c->ws, ne);
    psf_real *Y = PSF__J(c->ws, nd);
    for (int k = 0; k < K; k++) {
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                const size_t pij = ((size_t)i * N + j) * K + k, pji = ((size_t)j * N + i) * K + k;
                const size_t qi = ((size_t)k * N + i) * ec, qj = ((size_t)k * N + j) * ec, y = (size_t)k * nn + (size_t)i * n + j;
                const double a = V[pij] - V[pji], ei = E[qi], ej = E[qj], g = ei * ej;
                Y[y] = a * g;
                if (c->nb == 1) continue;
                double lap = (V[(size_t)(D + 1) * nnu + pij] - V[(size_t)(D + 1) * nnu + pji]) * g
                           + a * (E[(size_t)(D + 1) * ne_ + qi] * ej + ei * E[(size_t)(D + 1) * ne_ + qj]);
                for (int d = 1; d <= D; d++) {
                    const double ad = V[(size_t)d * nnu + pij] - V[(size_t)d * nnu + pji];
                    const double eid = E[(size_t)d * ne_ + qi], ejd = E[(size_t)d * ne_ + qj], gd = eid * ej + ei * ejd;
                    Y[(size_t)d * nout + y] = ad * g + a * gd;
                    lap += 2 * a * eid * ejd + 2 * ad * gd;
                }
                Y[(size_t)(D + 1) * nout + y] = lap;
            }
        if (!bd) continue;
        for (int s = 0; s < c->nb; s++) {
            psf_real *Ys = Y + (size_t)s * nout + (size_t)k * nn;
            for (int i = 0; i < N; i++) {
                const psf_real chi = ec > 1 ? E[(size_t)s * ne_ + ((size_t)k * N + i) * ec + 1] : 0;
                Ys[(size_t)i * n + N] = chi; Ys[(size_t)N * n + i] = -chi;
            }
            Ys[(size_t)N * n + N] = 0;
        }
    }
}
static void psf__skew_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *nu = &c->nodes[nd->in0], *ne = &c->nodes[nd->in1];
    const int K = nd->ia, bd = nd->ib, N = c->N, n = N + bd, ec = ne->cols;
    const size_t nn = (size_t)n * n;
    const psf_real *V = PSF__J(c->ws, nu), *E = PSF__J(c->ws, ne), *Yb = PSF__A(c->ws, nd);
    psf_real *Vb = PSF__A(c->ws, nu), *Eb = PSF__A(c->ws, ne);
    for (int k = 0; k < K; k++) {
        const psf_real *Ybk = Yb + (size_t)k * nn;
        for (int i = 0; i < N; i++)
            for (int j = 0; j < N; j++) {
                if (i == j) continue;
                const size_t pij = ((size_t)i * N + j) * K + k, pji = ((size_t)j * N + i) * K + k;
                const size_t qi = ((size_t)k * N + i) * ec, qj = ((size_t)k * N + j) * ec;
                const double a = V[pij] - V[pji], ei = E[qi], ej = E[qj], yb = Ybk[(size_t)i * n + j];
                Vb[pij] += yb * ei * ej;
                Vb[pji] -= yb * ei * ej;
                Eb[qi] += yb * a * ej;
                Eb[qj] += yb * a * ei;
            }
        if (bd && ec > 1)
            for (int i = 0; i < N; i++) Eb[((size_t)k * N + i) * ec + 1] += Ybk[(size_t)i * n + N] - Ybk[(size_t)N * n + i];
    }
}
#define psf__skew_sparse psf__sparse_none
#define psf__skew_scratch psf__scratch_none
/* K pair matrices from nu ((N N) x K) and the enveloped factors e ((K N) x (1 + border), or (K N) x 1 for a
 * zero border). */
static int psf__skew_node(psf_model *m, int nu, int e, int K, int border) {
    const int N = m->n_elec, n = N + border;
    PSF_ASSERT(m->too_large || (m->nodes[nu].rows == N * N && m->nodes[nu].cols == K && m->nodes[e].rows == K * N &&
                                (m->nodes[e].cols == 1 + border || m->nodes[e].cols == 1)));
    const int y = psf__node(m, PSF_OP_SKEW, nu, e, K * n, n);
    m->nodes[y].ia = K; m->nodes[y].ib = border;
    return y;
}
/* The pair network nu on the features h (N x W), K outputs: U = h W_u, V = h W_v per spin channel (and a bias),
 * then `layers` tanh layers of width c on the N^2 pairs, the first tanh(U_i + V_j), then a linear map to K. */
static int psf__pair_mlp(psf_model *m, int h, int K, int c, int layers, int zero_out, const char *name) {
    char nm[40];
    snprintf(nm, sizeof nm, "%s_uv", name);
    int z = psf__node(m, PSF_OP_TANH, psf__pairsum_node(m, psf__linear(m, h, 2 * c, 1, m->sys.n_up, nm)), -1,
                      m->n_elec * m->n_elec, c);
    for (int l = 1; l < layers; l++) {
        snprintf(nm, sizeof nm, "%s_l%d", name, l);
        z = psf__node(m, PSF_OP_TANH, psf__linear(m, z, c, 1, m->n_elec * m->n_elec, nm), -1, m->n_elec * m->n_elec, c);
    }
    snprintf(nm, sizeof nm, "%s_out", name);
    const int o = psf__linear(m, z, K, 0, m->n_elec * m->n_elec, nm);
    if (zero_out) m->pblocks[m->n_pblocks - 1].kind = PSF_PB_WEIGHT_ZERO; /* its one block: no bias, one group */
    return o;
}
#ifdef PSF_INTERNAL_TESTS
/* Two bordered pair matrices (the odd-N form) from a two-layer pair network and enveloped factors. */
static int psf__skew_example(psf_model *m, int x) {
    const int h = psf__linear(m, psf__features_node(m, x), 5, 1, m->n_elec, "ex.a");
    const int t = psf__node(m, PSF_OP_TANH, h, -1, m->n_elec, 5);
    const int nu = psf__pair_mlp(m, t, 2, 4, 2, 0, "ex.nu");
    const int e = psf__envelope_node(m, psf__linear(m, t, 2 * 2, 0, m->sys.n_up, "ex.e"), 2);
    return psf__skew_node(m, nu, e, 2, 1);
}
#endif

/* ---- LOGPF: log|psi_pf| = log|sum_k Pf M_k| with sign, for K skew-symmetric n x n matrices M_k (n even; only
 *      their strict upper triangles are read), the signed log-sum-exp of LOGDET with the Pfaffian in place of
 *      the determinant. Per Pfaffian, with A = M^{-1} (exactly skew, from the Parlett–Reid factors; Pf^2 = det):
 *        d lp = 1/2 tr(A M_d),   lap lp = 1/2 tr(A M_L) - 1/2 sum_d tr(A M_d A M_d).
 *      Combined with w_k = sign_k exp(lp_k) / psi_pf:  grad = sum_k w_k grad_k,
 *      lap = sum_k w_k (lap_k + |grad_k|^2) - |grad|^2.  Backward: dM_k = w_k 1/2 A_k^T (the gradient with
 *      M_ij and M_ji moving independently, split evenly between them; along a skew dM it gives 1/2 tr(A dM)).
 *      A singular Pfaffian has sign 0 and weight 0; if all are, log|psi| = -inf and sign 0. ia = K. in0 = the
 *      pair matrices ((K n) x n).                                                                          */
static void psf__logpf_fwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int K = nd->ia, n = in->cols, D = c->D;
    const size_t nn = (size_t)n * n, nin = PSF__N(in);
    const psf_real *M = PSF__J(c->ws, in);
    psf_real *y = PSF__J(c->ws, nd);
    /* scratch: work [n^2], inv [n^2], B [n^2], per-Pfaffian jets [K (D+1)] */
    psf_real *work = c->ws->scratch, *inv = work + nn, *B = inv + nn, *jk = B + nn;
    double lp[PSF_MAX_DETS], w[PSF_MAX_DETS];
    int sg[PSF_MAX_DETS], perm[PSF_MAX_ELEC + 1];
    PSF_ASSERT(K <= PSF_MAX_DETS && n <= PSF_MAX_ELEC + 1);
    for (int k = 0; k < K; k++) {
        const psf_real *Mk = M + (size_t)k * nn;
        if (c->nb == 1) { lp[k] = psf_logpfaffian(n, Mk, work, &sg[k]); continue; }
        lp[k] = psf__pfaffian_inverse(n, Mk, work, perm, inv, &sg[k]);
        if (!sg[k]) continue;
        psf_real *jg = jk + (size_t)k * (D + 1); /* grad [D], lap */
        const psf_real *ML = M + (size_t)(D + 1) * nin + (size_t)k * nn;
        double lap = 0;
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) lap += inv[(size_t)j * n + i] * ML[(size_t)i * n + j];
        lap *= 0.5;
        for (int d = 0; d < D; d++) {
            psf__gemm(0, 0, n, n, n, 1.0, inv, n, M + (size_t)(1 + d) * nin + (size_t)k * nn, n, 0.0, B, n);
            double tr = 0, tr2 = 0;
            for (int i = 0; i < n; i++) {
                tr += B[(size_t)i * n + i];
                for (int j = 0; j < n; j++) tr2 += B[(size_t)i * n + j] * B[(size_t)j * n + i];
            }
            jg[d] = 0.5 * tr;
            lap -= 0.5 * tr2;
        }
        jg[D] = lap;
    }
    y[0] = psf__logdet_combine(K, lp, sg, w, &c->ws->sign);
    if (c->nb == 1) return;
    if (c->ws->sign == 0) { for (int d = 0; d <= D; d++) y[1 + d] = 0; return; }
    psf__logsum_jet(K, D, w, jk, y);
}
static void psf__logpf_bwd(psf__ctx *c, const psf_node *nd) {
    const psf_node *in = &c->nodes[nd->in0];
    const int K = nd->ia, n = in->cols;
    const size_t nn = (size_t)n * n;
    const psf_real *M = PSF__J(c->ws, in);
    psf_real *dM = PSF__A(c->ws, in), *work = c->ws->scratch, *inv = work + nn;
    const double a = PSF__A(c->ws, nd)[0];
    double lp[PSF_MAX_DETS] = {0}, w[PSF_MAX_DETS];
    int sg[PSF_MAX_DETS] = {0}, perm[PSF_MAX_ELEC + 1], sign;
    /* the weights need every Pfaffian first; the inverses are then formed one at a time (a second
     * factorisation of n^3/6 instead of keeping K factorisations and permutations) */
    for (int k = 0; k < K; k++) lp[k] = psf_logpfaffian(n, M + (size_t)k * nn, work, &sg[k]);
    psf__logdet_combine(K, lp, sg, w, &sign);
    for (int k = 0; k < K; k++) {
        if (w[k] == 0) continue;
        int s;
        psf__pfaffian_inverse(n, M + (size_t)k * nn, work, perm, inv, &s);
        const double f = 0.5 * a * w[k];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) dM[(size_t)k * nn + (size_t)i * n + j] += f * inv[(size_t)j * n + i];
    }
}
#define psf__logpf_sparse psf__sparse_none
static size_t psf__logpf_scratch(const psf_node *nodes, const psf_node *nd, int D) {
    const size_t n = (size_t)nodes[nd->in0].cols, K = (size_t)nd->ia;
    return 3 * n * n + K * ((size_t)D + 1); /* forward: work, inv, B, jets; backward: work, inv */
}
/* log|sum_k Pf M_k| of the K pair matrices of node `pairs` ((K n) x n, n even). */
static int psf__logpf_node(psf_model *m, int pairs) {
    const int n = m->nodes[pairs].cols, K = m->nodes[pairs].rows / n;
    PSF_ASSERT(m->too_large || (K * n == m->nodes[pairs].rows && n % 2 == 0));
    const int lp = psf__node(m, PSF_OP_LOGPF, pairs, -1, 1, 1);
    m->nodes[lp].ia = K;
    return lp;
}
#ifdef PSF_INTERNAL_TESTS
/* Two Pfaffians of unbordered pair matrices on the example's atom (carbon: N = 6, even), F = N + 2 orbitals. */
static int psf__logpf_example(psf_model *m, int x) {
    const int F = m->n_elec + 2, h = psf__linear(m, psf__features_node(m, x), 5, 1, m->sys.n_up, "ex.a");
    const int phi = psf__linear(m, h, 2 * F, 0, m->sys.n_up, "ex.orb");
    return psf__logpf_node(m, psf__pair_node(m, psf__envelope_node(m, phi, 2), 2, 0, "ex.pair"));
}
#endif

/* ---- The rule table, generated from the registry PSF_OPS in the enum's order (so a row cannot land under the
 *      wrong op). Forward and jet share one function per op (slices 1.. are computed when nb > 1).           */
typedef struct {
    const char *name;
    void (*fwd)(psf__ctx *, const psf_node *);                           /* forward; the jet when nb > 1    */
    void (*bwd)(psf__ctx *, const psf_node *);                           /* vector-Jacobian product         */
    size_t (*scratch)(const psf_node *nodes, const psf_node *nd, int D); /* reals of ws->scratch it needs   */
    int (*sparse)(const psf_node *nodes, const psf_node *nd);            /* 1: per-electron jet (psf_node)  */
} psf__op_rules;
static const psf__op_rules psf__ops[] = {
#define PSF__OP_ROW(ID, name) {#name, psf__##name##_fwd, psf__##name##_bwd, psf__##name##_scratch, psf__##name##_sparse},
    PSF_OPS(PSF__OP_ROW)
#undef PSF__OP_ROW
};
PSF__STATIC_ASSERT(sizeof psf__ops / sizeof psf__ops[0] == PSF_OP_COUNT, "one rule row per registry row");

const char *psf_op_name(int op) { return op >= 0 && op < PSF_OP_COUNT ? psf__ops[op].name : "?"; }

static void psf__run(const psf_model *m, psf_workspace *ws, const psf_real *x, int upto, int jet) {
    psf__ctx c = {m->nodes, m->params, &m->sys, ws, x, m->n_elec, m->n_dim, jet ? m->n_dim + 2 : 1, NULL, 0};
    ws->sign = 1;
    ws->jet_mode = jet;
    for (int k = 0; k <= upto; k++) {
        const psf_node *nd = &m->nodes[k];
        psf__ops[nd->op].fwd(&c, nd);
        if (jet) memcpy(ws->jet + nd->off, ws->jet + nd->joff, sizeof(psf_real) * PSF__N(nd)); /* the value */
    }
    ws->n_dim = jet ? m->n_dim : 0;
}

double psf_model_logpsi(const psf_model *m, psf_workspace *ws, const psf_real *x, int *sign) {
    psf__run(m, ws, x, m->out_node, 0);
    if (sign) *sign = ws->sign;
    return ws->sign ? PSF__J(ws, &m->nodes[m->out_node])[0] : -INFINITY;
}

/* The forward pass of n <= ws->block walkers at once (psf_model_logpsi_block). The walkers' values of a node lie
 * one after another in the block layout (psf_workspace_init), so a linear layer is one call of its rule with
 * ctx.copies = n on walker 0's node table: one product over the n T rows, or per spin group over the gathered
 * rows (psf__linear_fwd). Every other op runs its rule per walker, on that walker's node table and view. */
static void psf__run_block(const psf_model *m, psf_workspace *ws, int n, const psf_real *x) {
    const int K = m->n_nodes;
    for (int w = 0; w < n; w++) ws->bviews[w].sign = 1;
    for (int k = 0; k <= m->out_node; k++) {
        const psf_node *nd = &m->nodes[k];
        if (nd->op == PSF_OP_LINEAR) { /* one rule call: its products cover the block's walkers' rows */
            psf__ctx c = {ws->bnodes, m->params, &m->sys, &ws->bviews[0], x, m->n_elec, m->n_dim, 1, NULL, n};
            psf__ops[PSF_OP_LINEAR].fwd(&c, &ws->bnodes[k]);
            continue;
        }
        for (int w = 0; w < n; w++) {
            const psf_node *tab = ws->bnodes + (size_t)w * K;
            psf__ctx c = {tab, m->params, &m->sys, &ws->bviews[w], x + (size_t)w * m->n_dim, m->n_elec, m->n_dim, 1,
                          NULL, 0};
            psf__ops[nd->op].fwd(&c, &tab[k]);
        }
    }
}

void psf_model_logpsi_block(const psf_model *m, psf_workspace *ws, int n, const psf_real *x, double *logpsi,
                            int *sign) {
    const int nb = ws->block;
    if (nb < 1 || !ws->bval) { /* a workspace made without blocks: one walker at a time */
        for (int w = 0; w < n; w++) logpsi[w] = psf_model_logpsi(m, ws, x + (size_t)w * m->n_dim, &sign[w]);
        return;
    }
    const size_t out = (size_t)nb * m->nodes[m->out_node].off;
    for (int w0 = 0; w0 < n; w0 += nb) {
        const int c = n - w0 < nb ? n - w0 : nb;
        psf__run_block(m, ws, c, x + (size_t)w0 * m->n_dim);
        for (int w = 0; w < c; w++) {
            sign[w0 + w] = ws->bviews[w].sign;
            logpsi[w0 + w] = ws->bviews[w].sign ? ws->bval[out + (size_t)w * PSF__N(&m->nodes[m->out_node])] : -INFINITY;
        }
    }
}

double psf_model_jet(const psf_model *m, psf_workspace *ws, const psf_real *x, psf_real *grad, psf_real *lap,
                     int *sign) {
    psf__run(m, ws, x, m->out_node, 1);
    const psf_real *y = PSF__J(ws, &m->nodes[m->out_node]);
    if (sign) *sign = ws->sign;
    if (grad) for (int d = 0; d < m->n_dim; d++) grad[d] = y[1 + d];
    if (lap) *lap = y[1 + m->n_dim];
    return ws->sign ? y[0] : -INFINITY;
}

const psf_real *psf_model_eval_node(const psf_model *m, psf_workspace *ws, const psf_real *x, int k, int mode) {
    psf__run(m, ws, x, k, mode);
    return PSF__J(ws, &m->nodes[k]);
}

/* Backward from node `from` with adjoint seed on its slice 0 (all n entries set to seed_vec or seed). */
static void psf__backward_from(const psf_model *m, psf_workspace *ws, const psf_real *x, int from,
                               const psf_real *seed_vec, double seed, psf_real *dparams) {
    psf__ctx c = {m->nodes, m->params, &m->sys, ws, x, m->n_elec, m->n_dim, 1, dparams, 0};
    ws->jet_mode = 0; /* the values of the last pass, forward or jet */
    memset(ws->adj, 0, sizeof(psf_real) * m->ws_adj_reals);
    memset(ws->dx, 0, sizeof(psf_real) * (size_t)m->n_dim);
    psf_real *a = PSF__A(ws, &m->nodes[from]);
    for (size_t i = 0; i < PSF__N(&m->nodes[from]); i++) a[i] = seed_vec ? seed_vec[i] : seed;
    for (int k = from; k >= 0; k--) psf__ops[m->nodes[k].op].bwd(&c, &m->nodes[k]);
}

static const psf_real *psf__ws_x(const psf_model *m, psf_workspace *ws) { return ws->jet + m->nodes[0].off; }

void psf_model_backward(const psf_model *m, psf_workspace *ws, double seed, psf_real *dparams) {
    /* the INPUT node's slice 0 holds the x of the last forward pass */
    psf__backward_from(m, ws, psf__ws_x(m, ws), m->out_node, NULL, seed, dparams);
}

void psf_model_backward_node(const psf_model *m, psf_workspace *ws, int k, const psf_real *adj, psf_real *dparams) {
    psf__backward_from(m, ws, psf__ws_x(m, ws), k, adj, 0.0, dparams);
}

/* ============================================================================================================
 *  [IMPL: ANSATZ] systems, the Psiformer graph, initialisation
 * ============================================================================================================ */

/* Ground states of first-row atoms (non-relativistic, infinite nuclear mass), hartree. exact: Chakravorty et al.,
 * PRA 47, 3649 (1993) (H exact; He Hylleraas-type); hf_limit: numerical Hartree–Fock limit. */
static const psf_atom_info psf__atoms[] = {
    {"H", 1, 1, 0, "2S", -0.5, -0.5},
    {"He", 2, 1, 1, "1S", -2.903724, -2.861680},
    {"Li", 3, 2, 1, "2S", -7.478060, -7.432727},
    {"Be", 4, 2, 2, "1S", -14.66736, -14.573023},
    {"B", 5, 3, 2, "2P", -24.65391, -24.529061},
    {"C", 6, 4, 2, "3P", -37.8450, -37.688619},
    {"N", 7, 5, 2, "4S", -54.5892, -54.400934},
    {"O", 8, 5, 3, "3P", -75.0673, -74.809398},
    {"F", 9, 5, 4, "2P", -99.7339, -99.409349},
    {"Ne", 10, 5, 5, "1S", -128.9376, -128.547098},
};

const psf_atom_info *psf_atom_lookup(const char *symbol) {
    for (size_t i = 0; i < sizeof psf__atoms / sizeof psf__atoms[0]; i++)
        if (symbol && strcmp(symbol, psf__atoms[i].symbol) == 0) return &psf__atoms[i];
    return NULL;
}

int psf_system_atom(psf_system *sys, const char *symbol, int spin) {
    const psf_atom_info *a = psf_atom_lookup(symbol);
    if (!a) return psf__fail(PSF_ERR_ARG, "psf_system_atom: unknown element '%s' (H..Ne are known)", symbol ? symbol : "(null)");
    if (spin < 0) spin = a->n_up - a->n_down;
    if (spin > a->Z || (a->Z - spin) % 2 != 0)
        return psf__fail(PSF_ERR_ARG, "psf_system_atom: spin %d impossible for %s with %d electrons", spin, symbol, a->Z);
    memset(sys, 0, sizeof *sys);
    sys->n_atoms = 1;
    sys->Z[0] = a->Z;
    sys->n_up = (a->Z + spin) / 2;
    sys->n_down = (a->Z - spin) / 2;
    return PSF_OK;
}

double psf_nuclear_repulsion(const psf_system *sys) {
    double v = 0;
    for (int at = 0; at < sys->n_atoms; at++)
        for (int J = at + 1; J < sys->n_atoms; J++) {
            double d2 = 0;
            for (int k = 0; k < 3; k++) d2 += (sys->R[at][k] - sys->R[J][k]) * (sys->R[at][k] - sys->R[J][k]);
            v += sys->Z[at] * sys->Z[J] / sqrt(d2);
        }
    return v;
}

/* ---- XYZ files ------------------------------------------------------------------------------------------ */

static const char *const psf__elements[] = {"H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",
                                            "Ne", "Na", "Mg", "Al", "Si", "P",  "S",  "Cl", "Ar"};

/* The nuclear charge of an element symbol H..Ar in any letter case; 0 if unknown. */
static int psf__element_z(const char *s) {
    for (int z = 1; z <= (int)(sizeof psf__elements / sizeof psf__elements[0]); z++) {
        const char *e = psf__elements[z - 1];
        size_t k = 0;
        while (e[k] && s[k] && (s[k] | 0x20) == (e[k] | 0x20)) k++;
        if (!e[k] && !s[k]) return z;
    }
    return 0;
}

/* Splits line (NUL-terminated, modified in place) at blanks into at most max fields; returns how many there
 * were (possibly more than max, then only max are stored). */
static int psf__fields(char *line, char **f, int max) {
    int n = 0;
    char *p = line;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\v' || *p == '\f') p++;
        if (!*p) return n;
        if (n < max) f[n] = p;
        n++;
        while (*p && *p != ' ' && *p != '\t' && *p != '\v' && *p != '\f') p++;
        if (*p) *p++ = 0;
    }
}

/* Quotes s for a message: at most 40 characters, then "...". */
static const char *psf__quote(const char *s, char buf[48]) {
    snprintf(buf, 48, "%.40s%s", s, strlen(s) > 40 ? "..." : "");
    return buf;
}

int psf_system_from_xyz_string(psf_system *sys, const char *text, size_t len, const char *name, int units_bohr,
                               int charge, int spin) {
    static const char *const axis[3] = {"x", "y", "z"};
    const double unit = units_bohr ? 1.0 : 1.0 / PSF_BOHR_ANGSTROM;
    const char *const U = units_bohr ? "bohr" : "angstrom";
    psf_system s;
    int lines[PSF_MAX_ATOMS];
    memset(&s, 0, sizeof s);
    if (!name) name = "(xyz)";
    if (!text) len = 0;
    size_t pos = 0;
    long n_atoms = 0;
    char line[256], raw[256], q[48], *f[5];
    for (int ln = 1;; ln++) {
        const int want_count = ln == 1, atom = ln - 3; /* atom >= 0: line of atom `atom` */
        if (pos >= len) { /* end of the text */
            if (want_count) return psf__fail(PSF_ERR_FORMAT, "%s:1: expected the atom count, got an empty file", name);
            if (ln == 2) return psf__fail(PSF_ERR_FORMAT, "%s:2: expected a comment line, got the end of the file", name);
            if (atom < n_atoms)
                return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected 'Symbol x y z' for atom %d of %ld, got the end of the file",
                                 name, ln, atom + 1, n_atoms);
            break;
        }
        const char *nl = (const char *)memchr(text + pos, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - (text + pos)) : len - pos;
        const char *src = text + pos;
        pos += n + (nl != NULL);
        if (n > 0 && src[n - 1] == '\r') n--;
        if (ln == 2) continue; /* the comment: anything */
        if (memchr(src, 0, n)) return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected text, got a NUL byte", name, ln);
        if (n >= sizeof line)
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected a line of at most %d characters, got %zu", name, ln,
                             (int)sizeof line - 1, n);
        memcpy(line, src, n);
        line[n] = 0;
        memcpy(raw, line, n + 1);
        const int nf = psf__fields(line, f, 5);
        if (want_count) {
            char *end;
            errno = 0;
            const long c = nf == 1 ? strtol(f[0], &end, 10) : 0;
            if (nf != 1 || errno || *end || c < 1)
                return psf__fail(PSF_ERR_FORMAT, "%s:1: expected the atom count (a positive integer), got '%s'", name,
                                 psf__quote(raw, q));
            if (c > PSF_MAX_ATOMS)
                return psf__fail(PSF_ERR_FORMAT, "%s:1: %ld atoms exceed PSF_MAX_ATOMS = %d (the most psf_system holds)",
                                 name, c, PSF_MAX_ATOMS);
            n_atoms = c;
            continue;
        }
        if (atom >= n_atoms) { /* after the atoms: blank lines only */
            if (nf == 0) continue;
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected the end of the file after the %ld atoms of line 1, got '%s' "
                             "(one frame only)", name, ln, n_atoms, psf__quote(f[0], q));
        }
        if (nf != 4)
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected 'Symbol x y z' for atom %d of %ld, got %d field%s", name, ln,
                             atom + 1, n_atoms, nf, nf == 1 ? "" : "s");
        const int z = psf__element_z(f[0]);
        if (!z) return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected an element symbol H..Ar, got '%s'", name, ln, psf__quote(f[0], q));
        s.Z[atom] = z;
        lines[atom] = ln;
        for (int k = 0; k < 3; k++) {
            char *end;
            const double v = strtod(f[1 + k], &end);
            if (end == f[1 + k] || *end || !(v >= -1000 && v <= 1000))
                return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected the %s coordinate of atom %d, a number in [-1000, 1000] "
                                 "(%s), got '%s'", name, ln, axis[k], atom + 1, U, psf__quote(f[1 + k], q));
            s.R[atom][k] = v * unit;
        }
        for (int J = 0; J < atom; J++) {
            double d2 = 0;
            for (int k = 0; k < 3; k++) d2 += (s.R[atom][k] - s.R[J][k]) * (s.R[atom][k] - s.R[J][k]);
            if (d2 < 1e-12)
                return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected distinct positions, got atom %d on atom %d (line %d)",
                                 name, ln, atom + 1, J + 1, lines[J]);
        }
    }
    s.n_atoms = (int)n_atoms;
    long zsum = 0;
    for (int at = 0; at < s.n_atoms; at++) zsum += (long)s.Z[at];
    const long N = zsum - (long)charge;
    if (N < 1 || N > PSF_MAX_ELEC)
        return psf__fail(PSF_ERR_ARG, "%s: charge %d leaves %ld electrons (nuclear charge %ld); expected 1..%d "
                         "(PSF_MAX_ELEC = %d)", name, charge, N, zsum, PSF_MAX_ELEC, PSF_MAX_ELEC);
    if (spin == -1) spin = (int)(N % 2);
    if (spin < 0 || spin > N)
        return psf__fail(PSF_ERR_ARG, "%s: spin %d impossible for %ld electrons: expected n_up - n_down in 0..%ld", name,
                         spin, N, N);
    if ((N - spin) % 2 != 0) {
        if (spin == 0)
            return psf__fail(PSF_ERR_ARG, "%s: spin 0 impossible: %ld electrons (nuclear charge %ld, charge %d) are an odd "
                             "number, so n_up = n_down cannot hold; an odd count needs an odd spin (1, 3, ...)",
                             name, N, zsum, charge);
        return psf__fail(PSF_ERR_ARG, "%s: spin %d impossible for %ld electrons: n_up - n_down must have the parity of "
                         "the electron count (%s)", name, spin, N, N % 2 ? "odd" : "even");
    }
    s.n_up = (int)((N + spin) / 2);
    s.n_down = (int)((N - spin) / 2);
    *sys = s;
    return PSF_OK;
}

int psf_system_from_xyz(psf_system *sys, const char *path, int units_bohr, int charge, int spin) {
    enum { MAX_BYTES = 1 << 20 };
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open: %s", path ? path : "(null)", path ? strerror(errno) : "no path");
    char *buf = (char *)PSF_MALLOC(MAX_BYTES + 1);
    if (!buf) { fclose(f); return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", path); }
    const size_t n = fread(buf, 1, MAX_BYTES + 1, f);
    const int bad = ferror(f);
    fclose(f);
    int rc;
    if (bad) rc = psf__fail(PSF_ERR_IO, "%s: read error", path);
    else if (n > MAX_BYTES) rc = psf__fail(PSF_ERR_FORMAT, "%s: expected an XYZ file of at most %d bytes", path, MAX_BYTES);
    else rc = psf_system_from_xyz_string(sys, buf, n, path, units_bohr, charge, spin);
    PSF_FREE(buf);
    return rc;
}

/* Standard geometries and reference energies. Bond lengths and the exact / estimated-exact energies of LiH, Li2,
 * N2 and CO are those of FermiNet's small-molecule table: D. Pfau, J. S. Spencer, A. G. D. G. Matthews,
 * W. M. C. Foulkes, Phys. Rev. Research 2, 033429 (2020), Table II (CO: its CCSD(T)/CBS column, the table having no
 * exact value). H2 and H2O are not in that table: H2 at its equilibrium distance 1.4011 bohr (W. Kolos,
 * L. Wolniewicz, J. Chem. Phys. 49, 404 (1968)); H2O at the experimental r(OH) = 0.9572 Å, angle(HOH) = 104.52°
 * (1.808846 bohr) with the experimentally derived non-relativistic, infinite-mass energy -76.438(3) Ha quoted by
 * A. Lüchow, J. B. Anderson, D. Feller, J. Chem. Phys. 106, 7706 (1997). Diatomics lie on the z axis. */
static const psf_molecule_info psf__molecules[] = {
    {"H2", 2, 0, 0, {1, 1}, {{0, 0, 0}, {0, 0, 1.4011}}, -1.1744757,
     "Kolos & Wolniewicz, J. Chem. Phys. 49, 404 (1968), R = 1.4011 bohr"},
    {"LiH", 2, 0, 0, {3, 1}, {{0, 0, 0}, {0, 0, 3.015}}, -8.07054846, "Pfau et al., PRR 2, 033429 (2020), Table II: exact"},
    {"Li2", 2, 0, 0, {3, 3}, {{0, 0, 0}, {0, 0, 5.051}}, -14.995447, "Pfau et al., PRR 2, 033429 (2020), Table II: exact"},
    {"N2", 2, 0, 0, {7, 7}, {{0, 0, 0}, {0, 0, 2.068}}, -109.542347, "Pfau et al., PRR 2, 033429 (2020), Table II: exact"},
    {"CO", 2, 0, 0, {6, 8}, {{0, 0, 0}, {0, 0, 2.173}}, -113.3255,
     "Pfau et al., PRR 2, 033429 (2020), Table II: CCSD(T)/CBS (estimated exact)"},
    {"H2O", 3, 0, 0, {8, 1, 1}, {{0, 0, 0}, {1.430428808, 1.107157044, 0}, {-1.430428808, 1.107157044, 0}}, -76.438,
     "experiment-derived, +/- 0.003 (Luchow, Anderson, Feller, J. Chem. Phys. 106, 7706 (1997)); r(OH) 0.9572 A, 104.52 deg"},
};

const psf_molecule_info *psf_molecule_table(int *count) {
    if (count) *count = (int)(sizeof psf__molecules / sizeof psf__molecules[0]);
    return psf__molecules;
}

/* The sorted (min Z, max Z, distance) triples of the pairs of nuclei. */
typedef struct { double za, zb, d; } psf__pair;
static int psf__pair_cmp(const void *a, const void *b) {
    const psf__pair *p = (const psf__pair *)a, *q = (const psf__pair *)b;
    if (p->za != q->za) return p->za < q->za ? -1 : 1;
    if (p->zb != q->zb) return p->zb < q->zb ? -1 : 1;
    return p->d < q->d ? -1 : p->d > q->d;
}
static int psf__pairs(int n, const double *Z, const double (*R)[3], psf__pair *out) {
    int m = 0;
    for (int i = 0; i < n; i++)
        for (int J = i + 1; J < n; J++) {
            double d2 = 0;
            for (int k = 0; k < 3; k++) d2 += (R[i][k] - R[J][k]) * (R[i][k] - R[J][k]);
            out[m].za = Z[i] < Z[J] ? Z[i] : Z[J];
            out[m].zb = Z[i] < Z[J] ? Z[J] : Z[i];
            out[m++].d = sqrt(d2);
        }
    qsort(out, (size_t)m, sizeof *out, psf__pair_cmp);
    return m;
}
static int psf__double_cmp(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

const psf_molecule_info *psf_molecule_match(const psf_system *sys, double tol) {
    int count;
    const psf_molecule_info *t = psf_molecule_table(&count);
    for (int r = 0; r < count; r++) {
        const psf_molecule_info *e = &t[r];
        const int n = e->n_atoms;
        if (sys->n_atoms != n) continue;
        long zsum = 0;
        double za[4], zb[4];
        for (int at = 0; at < n; at++) { za[at] = e->Z[at]; zb[at] = sys->Z[at]; zsum += e->Z[at]; }
        const long N = zsum - e->charge;
        if (sys->n_up != (N + e->spin) / 2 || sys->n_down != (N - e->spin) / 2) continue;
        qsort(za, (size_t)n, sizeof(double), psf__double_cmp);
        qsort(zb, (size_t)n, sizeof(double), psf__double_cmp);
        int same = 1;
        for (int at = 0; at < n; at++) same = same && za[at] == zb[at];
        if (!same) continue;
        psf__pair pa[6], pb[6];
        double ze[4], zs[4]; /* unsorted: row for row with the positions */
        for (int at = 0; at < n; at++) { ze[at] = e->Z[at]; zs[at] = sys->Z[at]; }
        const int m = psf__pairs(n, ze, e->R, pa);
        psf__pairs(n, zs, (const double(*)[3])sys->R, pb);
        for (int p = 0; p < m; p++) same = same && pa[p].za == pb[p].za && pa[p].zb == pb[p].zb && fabs(pa[p].d - pb[p].d) <= tol;
        if (same) return e;
    }
    return NULL;
}

void psf_config_default(psf_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->ansatz = PSF_ANSATZ_PSIFORMER;
    cfg->psiformer.n_layers = 2;
    cfg->psiformer.n_heads = 4;
    cfg->psiformer.head_dim = 16;
    cfg->psiformer.mlp_hidden = 64;
    cfg->psiformer.use_layernorm = 1;
    cfg->orbitals = PSF_ORBITALS_DET;
    cfg->n_dets = 4;
    cfg->use_jastrow = 1;
    cfg->use_en_cusp = 0;
}

/* ---- Trunks: per-electron features h (N x W) from the coordinates node x --------------------------------- */

/* The Psiformer (von Glehn et al. 2023, Fig. 1 / §3): features, embedding, L layers of multi-head self-attention
 * and a tanh MLP, each in a residual with an optional LayerNorm. Returns the last node (N x H d_head). */
static int psf__build_psiformer(psf_model *m, int x, const psf_psiformer_config *pc) {
    const int N = m->n_elec, W = pc->n_heads * pc->head_dim;
    char nm[40];
    int h = psf__linear(m, psf__features_node(m, x), W, 0, N, "embed");
    for (int l = 0; l < pc->n_layers && !m->too_large; l++) { /* too many layers fill the node table */
        snprintf(nm, sizeof nm, "l%d.q", l); const int q = psf__linear(m, h, W, 0, N, nm);
        snprintf(nm, sizeof nm, "l%d.k", l); const int kk = psf__linear(m, h, W, 0, N, nm);
        snprintf(nm, sizeof nm, "l%d.v", l); const int v = psf__linear(m, h, W, 0, N, nm);
        const int s = psf__attn_scores_node(m, q, kk, pc->n_heads, pc->head_dim);
        const int p = psf__node(m, PSF_OP_SOFTMAX, s, -1, pc->n_heads * N, N);
        const int o = psf__attn_mix_node(m, p, v, pc->n_heads, pc->head_dim);
        snprintf(nm, sizeof nm, "l%d.o", l); const int ao = psf__linear(m, o, W, 0, N, nm);
        h = psf__node(m, PSF_OP_ADD, h, ao, N, W);
        if (pc->use_layernorm) { snprintf(nm, sizeof nm, "l%d.ln1", l); h = psf__layernorm(m, h, nm); }
        snprintf(nm, sizeof nm, "l%d.mlp1", l); int u = psf__linear(m, h, pc->mlp_hidden, 1, N, nm);
        u = psf__node(m, PSF_OP_TANH, u, -1, N, pc->mlp_hidden);
        snprintf(nm, sizeof nm, "l%d.mlp2", l); u = psf__linear(m, u, W, 1, N, nm);
        u = psf__node(m, PSF_OP_TANH, u, -1, N, W);
        h = psf__node(m, PSF_OP_ADD, h, u, N, W);
        if (pc->use_layernorm) { snprintf(nm, sizeof nm, "l%d.ln2", l); h = psf__layernorm(m, h, nm); }
    }
    return h;
}

/* The shape's own limits: positive sizes, and the int products the builder forms (heads x head_dim, the width;
 * heads x N, the attention rows) within int. The node and parameter tables are checked while building. */
static int psf__check_psiformer(const psf_psiformer_config *pc, int n_elec) {
    if (pc->n_layers < 0 || pc->n_heads < 1 || pc->head_dim < 1 || pc->mlp_hidden < 1)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: invalid Psiformer shape (layers %d, heads %d, head_dim %d, mlp %d)",
                         pc->n_layers, pc->n_heads, pc->head_dim, pc->mlp_hidden);
    if ((long long)pc->n_heads * pc->head_dim > INT_MAX || (long long)pc->n_heads * n_elec > INT_MAX)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: network too large: heads %d x head_dim %d (or x %d electrons) "
                         "exceeds %d", pc->n_heads, pc->head_dim, n_elec, INT_MAX);
    return PSF_OK;
}

/* ---- Orbital heads: from features h to log|sum_k det| (sets m->orbital_node) ------------------------------ */

/* The orbital heads' projection: h (N x W) times per-spin weights <prefix>_up.w, <prefix>_down.w (W x cols, no
 * bias; always two groups, the second empty when n_down = 0), N x cols. */
static int psf__spin_projection(psf_model *m, int h, int cols, const char *prefix) {
    const int W = m->nodes[h].cols;
    const int phi = psf__node(m, PSF_OP_LINEAR, h, -1, m->n_elec, cols);
    m->nodes[phi].ia = m->sys.n_up; m->nodes[phi].ib = 0; m->nodes[phi].ic = 2;
    char nm[40];
    snprintf(nm, sizeof nm, "%s_up.w", prefix);
    psf__pblock(m, phi, nm, W, cols, PSF_PB_WEIGHT);
    snprintf(nm, sizeof nm, "%s_down.w", prefix);
    psf__pblock(m, phi, nm, W, cols, PSF_PB_WEIGHT);
    return phi;
}

/* K full determinants (FermiNet full_det): a linear projection per spin channel to K N orbitals (group 1 empty
 * when n_down = 0), envelopes, the signed log-sum-exp of the K determinants. */
static int psf__build_det_head(psf_model *m, int h, int K) {
    const int N = m->n_elec;
    const int phi = psf__spin_projection(m, h, K * N, "orb");
    m->orbital_node = psf__envelope_node(m, phi, K);
    return psf__logdet_node(m, m->orbital_node);
}

/* K Pfaffians (Gao & Günnemann, "Neural Pfaffians", NeurIPS 2024, arXiv:2405.14762): a linear projection per spin
 * channel to K (F + b) orbital features (b = 1 for odd N: the border orbital chi), the same envelopes as the
 * determinant head (so every pair entry carries e_i e_j and psi decays), the pair matrices
 * Phi_k = M_k (W_k - W_k^T) M_k^T bordered by chi_k when b = 1 (order n = N + b, even), and the signed log-sum-exp
 * of their Pfaffians. The spins enter through the per-spin projection (and the spin feature of the trunk). */
static int psf__bilinear_pairs(psf_model *m, int h, int K, int F) {
    const int N = m->n_elec, b = N & 1;
    const int phi = psf__spin_projection(m, h, K * (F + b), "pf_orb");
    return psf__pair_node(m, psf__envelope_node(m, phi, K), K, b, "pf_pair");
}
static int psf__build_pfaffian_head(psf_model *m, int h, int K, int F) {
    m->orbital_node = psf__bilinear_pairs(m, h, K, F);
    return psf__logpf_node(m, m->orbital_node);
}

/* K Pfaffians of the pair-MLP form (psf_pair_form MLP): one pair network nu with K outputs on the features h,
 * antisymmetrised, times the envelope factors e_k(i) e_k(j) of a per-spin projection of h to K (1 + b) columns
 * (column 0: e_k; column 1 for odd N: the border orbital chi_k), enveloped as the determinant head's orbitals. */
static int psf__build_pfaffian_mlp_head(psf_model *m, int h, int K, int c) {
    const int b = m->n_elec & 1;
    const int nu = psf__pair_mlp(m, h, K, c, 2, 0, "pf_nu");
    const int phi = psf__spin_projection(m, h, K * (1 + b), "pf_env");
    m->orbital_node = psf__skew_node(m, nu, psf__envelope_named(m, phi, K, "pf_env"), K, b);
    return psf__logpf_node(m, m->orbital_node);
}

/* The sum of the two (psf_pair_form BILINEAR_MLP): Phi_k = M_k (W_k - W_k^T) M_k^T + (nu_ij - nu_ji) e_k(i) e_k(j),
 * bordered by the bilinear part's chi_k only. nu's output layer starts at 0, so the model starts as the bilinear
 * form; the orbital node is the sum (ADD), whose first input is the bilinear PAIR node (pretraining's target). */
static int psf__build_pfaffian_sum_head(psf_model *m, int h, int K, int F, int c) {
    const int N = m->n_elec, b = N & 1, n = N + b;
    const int pair = psf__bilinear_pairs(m, h, K, F);
    const int nu = psf__pair_mlp(m, h, K, c, 2, 1, "pf_nu");
    const int phi = psf__spin_projection(m, h, K, "pf_env");
    const int skew = psf__skew_node(m, nu, psf__envelope_named(m, phi, K, "pf_env"), K, b);
    m->orbital_node = psf__node(m, PSF_OP_ADD, pair, skew, K * n, n);
    return psf__logpf_node(m, m->orbital_node);
}

/* ---- Layout and initialisation (generic: every op's scratch and sparsity come from its own rules) ----------- */

/* Values at consecutive offsets; jet blocks by liveness: node k's block is placed first-fit (lowest offset, in
 * units of 8 reals) among the blocks of nodes still live at k, i.e. nodes j < k read by a node >= k; the output
 * node is live to the end (psf_model_jet reads it), and a node with no reader only during its own op. */
static void psf__layout(psf_model *m) {
    const size_t D = (size_t)m->n_dim;
    size_t scratch = 0, values = 0, peak = 0, size[PSF_MAX_NODES];
    int last[PSF_MAX_NODES];
    for (int k = 0; k < m->n_nodes; k++) {
        psf_node *nd = &m->nodes[k];
        last[k] = k;
        if (nd->in0 >= 0 && nd->in0 < k) last[nd->in0] = k;
        if (nd->in1 >= 0 && nd->in1 < k) last[nd->in1] = k;
        size[k] = (psf__mul(D + 2, PSF__N(nd)) + 7) / 8 * 8;
    }
    if (m->out_node >= 0 && m->out_node < m->n_nodes) last[m->out_node] = m->n_nodes; /* even when read later */
    for (int k = 0; k < m->n_nodes; k++) {
        psf_node *nd = &m->nodes[k];
        nd->off = values;
        nd->adj_off = m->ws_adj_reals;
        values = psf__add(values, PSF__N(nd));
        m->ws_adj_reals = psf__add(m->ws_adj_reals, PSF__N(nd));
        size_t at = 0; /* first fit: the lowest offset clear of every live block (nodes j < k with last[j] >= k) */
        for (int moved = 1; moved;) {
            moved = 0;
            for (int j = 0; j < k; j++) {
                const size_t j0 = m->nodes[j].joff, j1 = j0 + size[j];
                if (last[j] >= k && at < j1 && j0 < at + size[k]) { at = j1; moved = 1; }
            }
        }
        nd->joff = at;
        if (psf__add(at, size[k]) > peak) peak = psf__add(at, size[k]);
        nd->sparse = psf__ops[nd->op].sparse(m->nodes, nd);
        const size_t need = psf__ops[nd->op].scratch(m->nodes, nd, m->n_dim);
        if (need > scratch) scratch = need;
    }
    values = (values + 7) / 8 * 8;
    m->ws_value_reals = values;
    /* a block's stacked products stay below PSF_CBLAS_MIN_MNK, on the built-in kernel, whose rows do not depend
     * on how many there are (so a block gives the bits of one walker at a time) */
    m->ws_block = PSF__WALKER_BLOCK;
    for (int k = 0; k < m->n_nodes; k++) {
        const psf_node *nd = &m->nodes[k];
        if (nd->op != PSF_OP_LINEAR || nd->ic != 1 || nd->in0 < 0) continue;
        const double mnk = (double)nd->rows * m->nodes[nd->in0].cols * nd->cols;
        while (m->ws_block > 1 && m->ws_block * mnk >= PSF_CBLAS_MIN_MNK) m->ws_block--;
    }
    for (int k = 0; k < m->n_nodes; k++) {
        const psf_node *nd = &m->nodes[k]; /* a block's spin-split layers gather ws_block walkers' rows */
        if (nd->op != PSF_OP_LINEAR || nd->ic < 2 || nd->in0 < 0) continue;
        const size_t need = psf__mul((size_t)m->ws_block * nd->rows, (size_t)(m->nodes[nd->in0].cols + nd->cols));
        if (need > scratch) scratch = need;
    }
    for (int k = 0; k < m->n_nodes; k++) m->nodes[k].joff += values; /* the jet area follows the values */
    m->ws_jet_reals = psf__add(values, peak);
    m->ws_scratch_reals = scratch;
}

static double psf__init_fanin(psf_rng *r, int rows) { return psf_rng_normal(r) / sqrt((double)rows); }
static double psf__init_normal(psf_rng *r, int rows) { (void)rows; return psf_rng_normal(r); }
static double psf__init_zero(psf_rng *r, int rows) { (void)r; (void)rows; return 0.0; }
static double psf__init_one(psf_rng *r, int rows) { (void)r; (void)rows; return 1.0; }
static double (*const psf__pblock_init[PSF_PB_COUNT])(psf_rng *, int) = {
#define PSF__PB_INIT(ID, init) psf__init_##init,
    PSF_PBLOCK_KINDS(PSF__PB_INIT)
#undef PSF__PB_INIT
};

static int psf__init_params(psf_model *m, uint64_t seed) {
    m->params = (psf_real *)psf__calloc(m->n_params, sizeof(psf_real));
    if (!m->params) return psf__fail(PSF_ERR_NOMEM, "psf_model_init: cannot allocate %zu parameters", m->n_params);
    psf_rng rng;
    psf_rng_seed(&rng, seed, 0x5EED0001ULL);
    for (int b = 0; b < m->n_pblocks; b++) {
        const psf_pblock *pb = &m->pblocks[b];
        psf_real *p = m->params + pb->off;
        for (size_t i = 0; i < (size_t)pb->rows * pb->cols; i++) p[i] = psf__pblock_init[pb->kind](&rng, pb->rows);
    }
    return PSF_OK;
}

static int psf__model_begin(psf_model *m, const psf_system *sys) {
    memset(m, 0, sizeof *m);
    const int N = sys->n_up + sys->n_down, A = sys->n_atoms;
    if (N < 1 || N > PSF_MAX_ELEC || sys->n_up < 0 || sys->n_down < 0)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: electron count %d out of range 1..%d", N, PSF_MAX_ELEC);
    if (A < 1 || A > PSF_MAX_ATOMS) return psf__fail(PSF_ERR_ARG, "psf_model_init: atom count %d out of range 1..%d", A, PSF_MAX_ATOMS);
    m->sys = *sys;
    m->n_elec = N;
    m->n_dim = 3 * N;
    return PSF_OK;
}

int psf_model_init(psf_model *m, const psf_system *sys, const psf_config *cfg, uint64_t seed) {
    int rc = psf__model_begin(m, sys);
    if (rc) return rc;
    if (cfg->n_dets < 1 || cfg->n_dets > PSF_MAX_DETS)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: n_dets = %d out of range 1..%d", cfg->n_dets, PSF_MAX_DETS);
    if ((int)cfg->ansatz < 0 || cfg->ansatz >= PSF_ANSATZ_COUNT)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: unknown ansatz %d", (int)cfg->ansatz);
    if ((int)cfg->orbitals < 0 || cfg->orbitals >= PSF_ORBITALS_COUNT)
        return psf__fail(PSF_ERR_ARG, "psf_model_init: unknown orbital head %d", (int)cfg->orbitals);
    const int pf_min = m->n_elec - (m->n_elec & 1), pf_F = cfg->pf_orbitals ? cfg->pf_orbitals : 2 * m->n_elec;
    const int pf_mlp = cfg->orbitals == PSF_ORBITALS_PFAFFIAN && cfg->pf_pair != PSF_PAIR_BILINEAR; /* has nu */
    const int pf_c = cfg->pf_hidden ? cfg->pf_hidden : 32;
    if (cfg->orbitals == PSF_ORBITALS_PFAFFIAN && ((int)cfg->pf_pair < 0 || cfg->pf_pair >= PSF_PAIR_COUNT))
        return psf__fail(PSF_ERR_ARG, "psf_model_init: unknown pair function %d", (int)cfg->pf_pair);
    if (pf_mlp && (pf_c < 1 || pf_c > 1024))
        return psf__fail(PSF_ERR_ARG, "psf_model_init: pf_hidden = %d out of range 1..1024", pf_c);
    if (cfg->orbitals == PSF_ORBITALS_PFAFFIAN && cfg->pf_pair != PSF_PAIR_MLP && (pf_F < pf_min || pf_F > 1024))
        return psf__fail(PSF_ERR_ARG, "psf_model_init: pf_orbitals = %d out of range %d..1024 for %d electrons (fewer "
                         "orbital features than that make every Pfaffian zero)", pf_F, pf_min, m->n_elec);
    m->cfg = *cfg;
    const int x = psf__node(m, PSF_OP_INPUT, -1, -1, m->n_elec, 3);
    int h = -1;
    switch (cfg->ansatz) { /* the one place that knows every trunk */
    case PSF_ANSATZ_PSIFORMER:
        if ((rc = psf__check_psiformer(&cfg->psiformer, m->n_elec))) return rc;
        h = psf__build_psiformer(m, x, &cfg->psiformer);
        if (m->too_large) return PSF_ERR_ARG; /* the message was set where the graph outgrew its limits */
        break;
    default: return psf__fail(PSF_ERR_ARG, "psf_model_init: unknown ansatz %d", (int)cfg->ansatz);
    }
    switch (cfg->orbitals) { /* the one place that knows every orbital head */
    case PSF_ORBITALS_DET: m->logdet_node = psf__build_det_head(m, h, cfg->n_dets); break;
    case PSF_ORBITALS_PFAFFIAN:
        m->logdet_node = cfg->pf_pair == PSF_PAIR_MLP ? psf__build_pfaffian_mlp_head(m, h, cfg->n_dets, pf_c)
                       : cfg->pf_pair == PSF_PAIR_BILINEAR_MLP ? psf__build_pfaffian_sum_head(m, h, cfg->n_dets, pf_F, pf_c)
                                                              : psf__build_pfaffian_head(m, h, cfg->n_dets, pf_F);
        break;
    default: return psf__fail(PSF_ERR_ARG, "psf_model_init: unknown orbital head %d", (int)cfg->orbitals);
    }
    m->out_node = m->logdet_node;
    if (cfg->use_jastrow || cfg->use_en_cusp) {
        const int j = psf__jastrow_node(m, x, cfg->use_jastrow, cfg->use_en_cusp);
        m->out_node = psf__node(m, PSF_OP_ADD, m->logdet_node, j, 1, 1);
    }
    if (m->too_large) return PSF_ERR_ARG; /* the message was set where the graph outgrew its limits */
    psf__layout(m);
    return psf__init_params(m, seed);
}

void psf_model_free(psf_model *m) {
    PSF_FREE(m->params);
    m->params = NULL;
}

/* The bytes psf_workspace_init allocates (psf_vmc_memory adds them up; keep the two in step). */
static size_t psf__workspace_bytes(const psf_model *m) {
    size_t b = psf__alloc_bytes(m->ws_jet_reals, sizeof(psf_real));
    b = psf__add(b, psf__alloc_bytes(m->ws_adj_reals, sizeof(psf_real)));
    b = psf__add(b, psf__alloc_bytes(psf__add(m->ws_scratch_reals, 1), sizeof(psf_real)));
    b = psf__add(b, psf__alloc_bytes((size_t)PSF_MAX_DETS * PSF_MAX_ELEC, sizeof(int)));
    const size_t nb = m->ws_block > 1 ? (size_t)m->ws_block : 1; /* as psf_workspace_init */
    b = psf__add(b, psf__alloc_bytes(psf__mul(nb, m->ws_value_reals), sizeof(psf_real)));
    b = psf__add(b, psf__alloc_bytes(psf__mul(nb, (size_t)m->n_nodes), sizeof(psf_node)));
    b = psf__add(b, psf__alloc_bytes(nb, sizeof(psf_workspace)));
    return psf__add(b, psf__alloc_bytes((size_t)m->n_dim, sizeof(psf_real)));
}

int psf_workspace_init(psf_workspace *ws, const psf_model *m) {
    memset(ws, 0, sizeof *ws);
    ws->jet = (psf_real *)psf__calloc(m->ws_jet_reals, sizeof(psf_real));
    ws->adj = (psf_real *)psf__calloc(m->ws_adj_reals, sizeof(psf_real));
    ws->scratch = (psf_real *)psf__calloc(psf__add(m->ws_scratch_reals, 1), sizeof(psf_real));
    ws->iscratch = (int *)psf__calloc((size_t)PSF_MAX_DETS * PSF_MAX_ELEC, sizeof(int));
    ws->dx = (psf_real *)psf__calloc((size_t)m->n_dim, sizeof(psf_real));
    const int nb = m->ws_block > 1 ? m->ws_block : 1, K = m->n_nodes;
    ws->bval = (psf_real *)psf__calloc(psf__mul((size_t)nb, m->ws_value_reals), sizeof(psf_real));
    ws->bnodes = (psf_node *)psf__calloc(psf__mul((size_t)nb, (size_t)K), sizeof(psf_node));
    ws->bviews = (psf_workspace *)psf__calloc((size_t)nb, sizeof(psf_workspace));
    if (!ws->jet || !ws->adj || !ws->scratch || !ws->iscratch || !ws->dx || !ws->bval || !ws->bnodes || !ws->bviews) {
        psf_workspace_free(ws);
        return psf__fail(PSF_ERR_NOMEM, "psf_workspace_init: out of memory (%zu reals)", m->ws_jet_reals);
    }
    /* block layout: node k's values of walker w at bval + nb off_k + w n_k, so that the walkers' rows of a node
     * follow one another (a stacked matrix); walker w's node table points there, its view of ws at bval */
    ws->block = nb;
    for (int w = 0; w < nb; w++) {
        for (int k = 0; k < K; k++) {
            psf_node *nd = &ws->bnodes[(size_t)w * K + k];
            *nd = m->nodes[k];
            nd->off = (size_t)nb * m->nodes[k].off + (size_t)w * PSF__N(&m->nodes[k]);
        }
        psf_workspace *v = &ws->bviews[w];
        v->jet = ws->bval;
        v->scratch = ws->scratch;
        v->iscratch = ws->iscratch;
    }
    return PSF_OK;
}

void psf_workspace_free(psf_workspace *ws) {
    PSF_FREE(ws->jet); PSF_FREE(ws->adj); PSF_FREE(ws->scratch); PSF_FREE(ws->iscratch); PSF_FREE(ws->dx);
    PSF_FREE(ws->bval); PSF_FREE(ws->bnodes); PSF_FREE(ws->bviews);
    memset(ws, 0, sizeof *ws);
}

/* ---- psf_wavefunction adapters ------------------------------------------------------------------------ */
static double psf__model_logpsi(void *ctx, void *ws, const psf_real *x, int *sign) {
    return psf_model_logpsi((const psf_model *)ctx, (psf_workspace *)ws, x, sign);
}
static double psf__model_jet(void *ctx, void *ws, const psf_real *x, psf_real *g, psf_real *lap, int *sign) {
    return psf_model_jet((const psf_model *)ctx, (psf_workspace *)ws, x, g, lap, sign);
}
static void psf__model_logpsi_block(void *ctx, void *ws, int n, const psf_real *x, double *logpsi, int *sign) {
    psf_model_logpsi_block((const psf_model *)ctx, (psf_workspace *)ws, n, x, logpsi, sign);
}
static void *psf__model_ws_new(void *ctx) {
    psf_workspace *ws = (psf_workspace *)PSF_MALLOC(sizeof *ws);
    if (ws && psf_workspace_init(ws, (const psf_model *)ctx) != PSF_OK) { PSF_FREE(ws); ws = NULL; }
    return ws;
}
static void psf__model_ws_free(void *ctx, void *ws) {
    (void)ctx;
    if (ws) { psf_workspace_free((psf_workspace *)ws); PSF_FREE(ws); }
}
psf_wavefunction psf_model_wavefunction(psf_model *m) {
    psf_wavefunction wf = {m->n_elec, m, psf__model_logpsi, psf__model_jet, psf__model_ws_new, psf__model_ws_free,
                           psf__model_logpsi_block};
    return wf;
}

static double psf__hyd_logpsi(void *ctx, void *ws, const psf_real *x, int *sign) {
    const psf_hydrogenic *h = (const psf_hydrogenic *)ctx;
    double s = 0, r[3];
    (void)ws;
    for (int i = 0; i < h->n_elec; i++) s += psf__dist(h->R0, x + 3 * i, r);
    *sign = 1;
    return -h->zeta * s;
}
/* grad log psi = -zeta r/|r| per electron; lap log psi = -2 zeta / |r| per electron. */
static double psf__hyd_jet(void *ctx, void *ws, const psf_real *x, psf_real *g, psf_real *lap, int *sign) {
    const psf_hydrogenic *h = (const psf_hydrogenic *)ctx;
    double s = 0, L = 0, r[3];
    (void)ws;
    for (int i = 0; i < h->n_elec; i++) {
        const double rho = psf__dist(h->R0, x + 3 * i, r);
        s += rho;
        if (g) for (int k = 0; k < 3; k++) g[3 * i + k] = -h->zeta * r[k] / rho;
        L += -2 * h->zeta / rho;
    }
    *sign = 1;
    if (lap) *lap = L;
    return -h->zeta * s;
}
static void *psf__no_ws(void *ctx) { (void)ctx; return NULL; }
static void psf__no_ws_free(void *ctx, void *ws) { (void)ctx; (void)ws; }
psf_wavefunction psf_hydrogenic_wavefunction(psf_hydrogenic *h) {
    psf_wavefunction wf = {h->n_elec, h, psf__hyd_logpsi, psf__hyd_jet, psf__no_ws, psf__no_ws_free, NULL};
    return wf;
}

/* ============================================================================================================
 *  [IMPL: HAMILTONIAN] H = -1/2 sum_i nabla_i^2 - sum_{i,I} Z_I/|r_i - R_I| + sum_{i<j} 1/|r_i - r_j|
 *                          + sum_{I<J} Z_I Z_J / |R_I - R_J|   (Born–Oppenheimer, atomic units)
 * ============================================================================================================ */

double psf_potential(const psf_system *sys, const psf_real *x, double *v_en, double *v_ee, double *v_nn) {
    const int N = sys->n_up + sys->n_down;
    double en = 0, ee = 0, r[3];
    for (int i = 0; i < N; i++)
        for (int at = 0; at < sys->n_atoms; at++) en -= sys->Z[at] / psf__dist(sys->R[at], x + 3 * i, r);
    for (int i = 0; i < N; i++)
        for (int j = i + 1; j < N; j++) {
            double d2 = 0;
            for (int k = 0; k < 3; k++) d2 += (x[3 * i + k] - x[3 * j + k]) * (x[3 * i + k] - x[3 * j + k]);
            ee += 1 / sqrt(d2);
        }
    const double nn = psf_nuclear_repulsion(sys);
    if (v_en) *v_en = en;
    if (v_ee) *v_ee = ee;
    if (v_nn) *v_nn = nn;
    return en + ee + nn;
}

void psf_local_energy(const psf_system *sys, const psf_wavefunction *wf, void *ws, const psf_real *x,
                      psf_real *grad, psf_eloc *out) {
    psf_real lap = 0;
    int sign = 0;
    wf->jet(wf->ctx, ws, x, grad, &lap, &sign);
    double g2 = 0;
    for (int d = 0; d < 3 * wf->n_elec; d++) g2 += grad[d] * grad[d];
    out->kinetic = -0.5 * (lap + g2);
    psf_potential(sys, x, &out->v_en, &out->v_ee, &out->v_nn);
    out->total = sign ? out->kinetic + out->v_en + out->v_ee + out->v_nn : NAN;
}

/* ============================================================================================================
 *  [IMPL: REFERENCE] reference determinants: the built-in Hartree–Fock orbitals of H..Ne and psi_ref as a
 *  wavefunction (the pretraining target; the HF energy test of the Hamiltonian)
 * ============================================================================================================ */

/* hf_sto.inc -- analytic Roothaan-Hartree-Fock orbitals of the atoms H..Ne
 * in Slater-type-orbital (STO) bases, for use as pretraining targets.
 * C99 fragment: needs only <math.h>. Atomic units (bohr, hartree).
 *
 * SOURCE OF THE NUMBERS (exponents, principal quantum numbers, coefficients,
 * total energies), He..Ne:
 *   T. Koga, K. Kanayama, S. Watanabe, A. J. Thakkar, "Analytical Hartree-Fock
 *   wave functions subject to cusp and asymptotic constraints: He to Xe,
 *   Li+ to Cs+, H-", Int. J. Quantum Chem. 71, 491-497 (1999).
 *   Numbers read from the machine-readable copy in the BFit repository
 *   (github.com/theochem/BFit, commit 4ab9a11e8f4103ff5b1f7304ed7a628ac37b3c65,
 *   files bfit/data/neutral/<el>.slater and bfit/data/data.tar:neutral/<el>.slater).
 *   H: exact hydrogen 1s, zeta = 1, E = -1/2 (same file set, h.slater).
 * These are near-Hartree-Fock-limit RHF functions for the ground TERM
 * (e.g. Ne -128.547098079 vs the numerical-HF limit -128.547098109, Be
 * -14.573023167 vs -14.573023168) and are cusp-constrained: the source's
 * "CUSP" ratios are 0.9992..1.0002 (for s orbitals this is -R'(0)/(Z R(0)),
 * checked),
 * which keeps the VMC local energy well behaved near the nucleus.
 * The coefficients are given to 7 decimals, so the orbitals are normalised
 * and orthogonal only to |S - 1| <= 2.6e-7 (measured; see README).
 * (Clementi & Roetti 1974 tables were also found -- Tonto repository,
 * basis_sets/Clementi-Roetti -- but with 5-digit coefficients, no energies and
 * a non-HF H entry, so the Koga set was preferred.)
 * Only the numbers are taken; the code is original.
 *
 * CONVENTIONS
 *   STO:  chi_{n,zeta}(r) = N r^(n-1) exp(-zeta r),
 *         N = (2 zeta)^(n+1/2) / sqrt((2n)!)    (normalised: int chi^2 r^2 dr = 1).
 *   The tabulated coefficients multiply the NORMALISED STOs (checked: the
 *   radial overlaps reproduce the identity to < 3e-7 with this N).
 *   Radial function R_o(r) = sum_k c_{k,o} chi_k(r); int R_o^2 r^2 dr = 1.
 *   Orbitals (each normalised to 1 over R^3), fixed order o = 0..4:
 *     o=0  1s   = R_1s(r) / sqrt(4 pi)
 *     o=1  2s   = R_2s(r) / sqrt(4 pi)
 *     o=2  2p_x = sqrt(3/(4 pi)) R_2p(r) x / r     (o=3: y, o=4: z)
 *   Overall signs are those of the source table (e.g. Li 1s is negative near
 *   the nucleus, Be 1s positive); any orbital's sign is arbitrary.
 *
 * GROUND-STATE DETERMINANT.  Spin-up electrons fill orbitals 0,1,2,.. (n_up of
 * them), spin-down electrons likewise (n_down of them):
 *     H (1,0) He (1,1) Li (2,1) Be (2,2) B (3,2) C (4,2) N (5,2) O (5,3)
 *     F (5,4) Ne (5,5)                                     (n_up, n_down)
 *   i.e. up: 1s 2s px py pz; down: 1s 2s px py pz, truncated.
 * Why D_up*D_down is a pure state of the ground term, so that its energy
 * expectation with these RHF orbitals equals the tabulated RHF term energy:
 *   H, Li  (2S): one unpaired s electron outside closed shells: 2S, M_S=1/2.
 *   He, Be, Ne (1S): all shells closed, 1S.
 *   B  (2P): closed 1s2 2s2 plus one p electron (p_x up): 2P, any p component.
 *   C  (3P): p^2 with both p electrons spin-up (M_S = 1 = S_max). The spatial
 *       part p_x p_y - p_y p_x is antisymmetric; in p x p = S+P+D only L=1 is
 *       antisymmetric, so the state is pure 3P (it is the M_L=0 component,
 *       up to a phase, since p_x^p_y ~ p_{+1}^p_{-1}).
 *   N  (4S): p^3 all spin-up, M_S = 3/2 = S_max is only possible in 4S.
 *   O  (3P): p^4 = p^6 minus two holes; the two holes (p_y down, p_z down)
 *       have parallel spin, so by the C argument the state is pure 3P (M_S=1).
 *   F  (2P): p^5 = one hole (p_z down): pure 2P.
 *   In every case the determinant lies inside the ground term built from the
 *   same (term-optimised, spin-restricted) orbitals; H is a scalar, so every
 *   normalised state of the term has the same energy -- the RHF term energy
 *   e_hf tabulated below.  (check_hf.c verifies this exactly by radial
 *   quadrature with the Slater-Condon rules, and statistically by VMC.)
 *   NOT valid for other (n_up, n_down) choices with the same Z, e.g. C with
 *   (3,3) = p_x up, p_x down is a mixture of 1D and 1S, not 3P.
 *
 * AVAILABLE ORBITALS (n_orb max): H 1, He 1, Li 2, Be 2, B..Ne 5.  The p
 * radial function of B..F is the RHF 2p shell function; all three p_c share it.
 */

typedef struct {
    int    n;      /* principal quantum number of the STO               */
    double zeta;   /* exponent, bohr^-1                                  */
    double c[2];   /* s block: {c_1s, c_2s}; p block: {c_2p, unused=0}  */
} psf__hf_sto_fn;

typedef struct {
    const char *sym;
    int    Z, n_up, n_down;
    int    n_orb;          /* occupied spatial orbitals available (order 1s,2s,2px,2py,2pz) */
    double e_hf;           /* tabulated RHF total energy of the ground term, hartree */
    int    ns;             /* number of s STOs */
    psf__hf_sto_fn s[8];
    int    np;             /* number of p STOs */
    psf__hf_sto_fn p[7];
} psf__hf_sto_atom;

/* Z = 1..10 at index Z-1.  Columns: { n, zeta, { c_1s, c_2s } } for s STOs,
 * { n, zeta, { c_2p, 0 } } for p STOs (n = 2 or 3 for the p STOs). */
static const psf__hf_sto_atom psf__hf_sto_atoms[10] = {
    { /* H 2S: exact hydrogen 1s (zeta = 1); file h.slater */
        "H", 1, 1, 0, 1,
        -0.500000000,
        1, {
            { 1,   1.000000, {  1.0000000,  0.0000000 } },
        },
        0, {{0, 0.0, {0.0, 0.0}}}
    },
    { /* He 1S: Koga et al. 1999; file he.slater */
        "He", 2, 1, 1, 1,
        -2.861679996,
        5, {
            { 2,   6.437494, {  0.0008103,  0.0000000 } },
            { 1,   3.384356, {  0.0798826,  0.0000000 } },
            { 1,   2.177906, {  0.1801610,  0.0000000 } },
            { 1,   1.455077, {  0.7407925,  0.0000000 } },
            { 2,   1.354958, {  0.0272015,  0.0000000 } },
        },
        0, {{0, 0.0, {0.0, 0.0}}}
    },
    { /* Li 2S: Koga et al. 1999; file li.slater */
        "Li", 3, 2, 1, 2,
        -7.432726929,
        8, {
            { 1,  10.335672, {  0.0014270,  0.0002728 } },
            { 1,   5.553473, { -0.0514718, -0.0059858 } },
            { 1,   3.453336, { -0.1471640, -0.0400549 } },
            { 1,   2.416445, { -0.8105589, -0.0273618 } },
            { 1,   1.555772, { -0.0077788, -0.1448297 } },
            { 1,   0.889955, {  0.0004098, -0.6053390 } },
            { 2,   0.637402, { -0.0005029,  0.5955827 } },
            { 1,   0.626614, { -0.0002691,  0.9979831 } },
        },
        0, {{0, 0.0, {0.0, 0.0}}}
    },
    { /* Be 1S: Koga et al. 1999; file be.slater */
        "Be", 4, 2, 2, 2,
        -14.573023167,
        8, {
            { 1,  12.683501, { -0.0024917,  0.0004442 } },
            { 1,   8.105927, {  0.0314015, -0.0030990 } },
            { 1,   5.152556, {  0.0849694, -0.0367056 } },
            { 1,   3.472467, {  0.8685562,  0.0138910 } },
            { 1,   2.349757, {  0.0315855, -0.3598016 } },
            { 1,   1.406429, { -0.0035284, -0.2563459 } },
            { 2,   0.821620, { -0.0004149,  0.2434108 } },
            { 1,   0.786473, {  0.0012299,  1.1150995 } },
        },
        0, {{0, 0.0, {0.0, 0.0}}}
    },
    { /* B 2P: Koga et al. 1999; file b.slater */
        "B", 5, 3, 2, 5,
        -24.529060725,
        8, {
            { 2,  16.109305, { -0.0005529, -0.0001239 } },
            { 1,   7.628062, { -0.2350117,  0.0122241 } },
            { 2,   6.135799, { -0.1508924,  0.0355967 } },
            { 1,   4.167618, { -0.6421165, -0.1987214 } },
            { 1,   2.488602, { -0.0011507, -0.5378967 } },
            { 2,   1.642523, { -0.0008611, -0.1199728 } },
            { 1,   0.991698, {  0.0004712,  1.4382402 } },
            { 1,   0.787218, { -0.0002323,  0.0299258 } },
        },
        7, {
            { 3,  12.135370, {  0.0000599,  0.0000000 } },
            { 2,   5.508493, {  0.0113751,  0.0000000 } },
            { 3,   3.930298, {  0.0095096,  0.0000000 } },
            { 2,   2.034395, {  0.1647518,  0.0000000 } },
            { 2,   1.301082, {  0.3367860,  0.0000000 } },
            { 2,   0.919434, {  0.4099162,  0.0000000 } },
            { 2,   0.787218, {  0.1329396,  0.0000000 } },
        },
    },
    { /* C 3P: Koga et al. 1999; file c.slater */
        "C", 6, 4, 2, 5,
        -37.688618960,
        8, {
            { 2,  18.890445, { -0.0005490, -0.0001371 } },
            { 1,   9.238787, { -0.2240196,  0.0125129 } },
            { 2,   7.517513, { -0.1458182,  0.0314257 } },
            { 1,   5.100368, { -0.6531614, -0.1900434 } },
            { 1,   3.276630, { -0.0040799, -0.4731413 } },
            { 2,   2.270243, { -0.0011082, -0.0222123 } },
            { 1,   1.192963, { -0.0002033,  1.2890026 } },
            { 1,   0.930957, { -0.0000658,  0.0176521 } },
        },
        7, {
            { 3,  15.083626, {  0.0000552,  0.0000000 } },
            { 2,   6.565676, {  0.0137471,  0.0000000 } },
            { 3,   4.729110, {  0.0162926,  0.0000000 } },
            { 2,   2.494494, {  0.2011747,  0.0000000 } },
            { 2,   1.601933, {  0.3651183,  0.0000000 } },
            { 2,   1.123315, {  0.3811596,  0.0000000 } },
            { 2,   0.930957, {  0.0951923,  0.0000000 } },
        },
    },
    { /* N 4S: Koga et al. 1999; file n.slater */
        "N", 7, 5, 2, 5,
        -54.400934199,
        8, {
            { 2,  21.666277, { -0.0005456, -0.0001302 } },
            { 1,  10.957976, { -0.1970483,  0.0186923 } },
            { 2,   8.981511, { -0.1281924,  0.0337130 } },
            { 1,   6.085323, { -0.6885659, -0.2066322 } },
            { 1,   3.948957, { -0.0102852, -0.4498099 } },
            { 2,   2.648617, { -0.0012032,  0.0126996 } },
            { 1,   1.406521, { -0.0003913,  1.2313602 } },
            { 1,   1.065447, { -0.0000291,  0.0261302 } },
        },
        7, {
            { 3,  17.587523, {  0.0000533,  0.0000000 } },
            { 2,   7.584576, {  0.0160353,  0.0000000 } },
            { 3,   5.559658, {  0.0221910,  0.0000000 } },
            { 2,   2.932934, {  0.2314394,  0.0000000 } },
            { 2,   1.874157, {  0.3844061,  0.0000000 } },
            { 2,   1.306305, {  0.3515842,  0.0000000 } },
            { 2,   1.065447, {  0.0723077,  0.0000000 } },
        },
    },
    { /* O 3P: Koga et al. 1999; file o.slater */
        "O", 8, 5, 3, 5,
        -74.809398459,
        8, {
            { 2,  24.975698, { -0.0004756, -0.0001236 } },
            { 1,  12.554759, { -0.1852813,  0.0164417 } },
            { 2,  10.357096, { -0.1195096,  0.0288443 } },
            { 1,   7.071190, { -0.6980503, -0.1793400 } },
            { 1,   4.804646, { -0.0198704, -0.4384450 } },
            { 2,   2.785958, { -0.0014337,  0.0752410 } },
            { 1,   1.606267, { -0.0000556,  1.1524847 } },
            { 1,   1.124194, { -0.0001180,  0.0142550 } },
        },
        7, {
            { 3,  20.797000, {  0.0000481,  0.0000000 } },
            { 2,   8.661006, {  0.0171803,  0.0000000 } },
            { 3,   6.427925, {  0.0268010,  0.0000000 } },
            { 2,   3.402194, {  0.2528558,  0.0000000 } },
            { 2,   2.135366, {  0.3853260,  0.0000000 } },
            { 2,   1.425500, {  0.3433520,  0.0000000 } },
            { 2,   1.124194, {  0.0652167,  0.0000000 } },
        },
    },
    { /* F 2P: Koga et al. 1999; file f.slater */
        "F", 9, 5, 4, 5,
        -99.409349369,
        8, {
            { 2,  27.647598, { -0.0004697, -0.0001318 } },
            { 1,  14.291092, { -0.1659861,  0.0120793 } },
            { 2,  11.832995, { -0.1073798,  0.0223256 } },
            { 1,   8.080680, { -0.7181088, -0.1484346 } },
            { 1,   5.633450, { -0.0291976, -0.4452401 } },
            { 2,   3.182099, { -0.0015668,  0.1053716 } },
            { 1,   1.812284, { -0.0001671,  1.1104016 } },
            { 1,   1.208319, { -0.0001024,  0.0133407 } },
        },
        7, {
            { 3,  22.939589, {  0.0000474,  0.0000000 } },
            { 2,   9.684811, {  0.0187577,  0.0000000 } },
            { 3,   7.284146, {  0.0309393,  0.0000000 } },
            { 2,   3.846095, {  0.2700273,  0.0000000 } },
            { 2,   2.385087, {  0.3918133,  0.0000000 } },
            { 2,   1.560088, {  0.3293205,  0.0000000 } },
            { 2,   1.208319, {  0.0568617,  0.0000000 } },
        },
    },
    { /* Ne 1S: Koga et al. 1999; file ne.slater */
        "Ne", 10, 5, 5, 5,
        -128.547098079,
        8, {
            { 2,  29.214419, { -0.0005654, -0.0001682 } },
            { 1,  16.354484, { -0.1341233,  0.0046073 } },
            { 2,  13.516489, { -0.0891954,  0.0131200 } },
            { 1,   9.144899, { -0.7527202, -0.1044881 } },
            { 1,   6.491668, { -0.0417988, -0.4632619 } },
            { 2,   3.574219, { -0.0017244,  0.1258193 } },
            { 1,   2.016153, { -0.0002064,  1.0809135 } },
            { 1,   1.304155, { -0.0001014,  0.0127644 } },
        },
        7, {
            { 3,  25.731219, {  0.0000409,  0.0000000 } },
            { 2,  10.674843, {  0.0203038,  0.0000000 } },
            { 3,   8.124569, {  0.0340866,  0.0000000 } },
            { 2,   4.295590, {  0.2801866,  0.0000000 } },
            { 2,   2.648660, {  0.3958489,  0.0000000 } },
            { 2,   1.710436, {  0.3203928,  0.0000000 } },
            { 2,   1.304155, {  0.0510413,  0.0000000 } },
        },
    },
};

/* Evaluate the first n_orb orbitals (order 1s, 2s, 2p_x, 2p_y, 2p_z) of atom Z
 * at electron position r (bohr, nucleus at the origin).
 *   val[o], grad[3*o+c] = d phi_o / d x_c, lap[o] = nabla^2 phi_o.
 * grad and lap may be NULL.  Returns 0, or -1 if Z is not 1..10 or n_orb is
 * not in 1..n_orb_max(Z) (H, He: 1; Li, Be: 2; B..Ne: 5).
 *
 * Formulas.  Write every orbital as phi = K * P(r_vec) * g(r) with
 *   s:  P = 1,    l = 0, K = 1/sqrt(4 pi),   g = R(r)
 *   p:  P = x_c,  l = 1, K = sqrt(3/(4 pi)), g = R(r)/r
 * so that g(r) = sum_k c_k N_k h_k(r),  h_k = r^m exp(-zeta_k r),  m = n_k-1-l >= 0.
 * Per STO term:
 *   h'  = (m/r - zeta) h
 *   h'' + 2 h'/r + 2l h'/r = [ (n(n-1) - l(l+1))/r^2 - 2 n zeta/r + zeta^2 ] h
 *   (the bracket is the familiar  nabla^2 [r^(n-1) e^(-zeta r) Y_lm] / [r^(n-1) e^(-zeta r) Y_lm]).
 * Then, with rhat = r_vec/r and the P(r_vec) homogeneous of degree l:
 *   grad phi = K [ g'(r) rhat P + g grad P ]           (grad x_c = e_c)
 *   lap  phi = K P [ g'' + 2 g'/r + 2 l g'/r ]         (since P harmonic and
 *              r_vec . grad P = l P)
 * r is floored at 1e-12, so r -> 0 gives finite numbers (the true Laplacian
 * of an n=1 s STO has a -2 zeta/r singularity at the nucleus, cancelled in
 * E_L by -Z/r to the extent the cusp condition holds); no NaN is produced. */
static int psf__hf_sto_eval(int Z, int n_orb, const double r[3],
                            double *val, double *grad, double *lap)
{
    const double inv_sqrt_4pi = 0.28209479177387814347; /* 1/sqrt(4 pi) */
    const double sqrt_3_4pi   = 0.48860251190291992159; /* sqrt(3/(4 pi)) */
    static const double fact2n[4] = { 1.0, 2.0, 24.0, 720.0 }; /* (2n)!, n=0..3 */
    const psf__hf_sto_atom *A;
    double x, y, z, rr, ir;
    double g[2] = { 0.0, 0.0 }, dg[2] = { 0.0, 0.0 }, lg[2] = { 0.0, 0.0 };
    int k, o, ns_orb;

    if (Z < 1 || Z > 10) return -1;
    A = &psf__hf_sto_atoms[Z - 1];
    if (n_orb < 1 || n_orb > A->n_orb) return -1;

    x = r[0]; y = r[1]; z = r[2];
    rr = sqrt(x * x + y * y + z * z);
    if (rr < 1e-12) rr = 1e-12;
    ir = 1.0 / rr;

    /* ---- s block (l = 0, m = n-1) ---- */
    ns_orb = n_orb < 2 ? n_orb : 2;
    for (k = 0; k < A->ns; ++k) {
        const psf__hf_sto_fn *f = &A->s[k];
        const int n = f->n;
        const double ze = f->zeta, tz = 2.0 * ze;
        double nrm = sqrt(tz / fact2n[n]), h;
        int i;
        for (i = 0; i < n; ++i) nrm *= tz;            /* (2 zeta)^n sqrt(2 zeta/(2n)!) */
        h = nrm * exp(-ze * rr);
        for (i = 1; i < n; ++i) h *= rr;              /* r^(n-1) */
        {
            const double a = (double)(n - 1) * ir - ze;
            const double L = (double)(n * (n - 1)) * ir * ir - 2.0 * n * ze * ir + ze * ze;
            for (o = 0; o < ns_orb; ++o) {
                const double ch = f->c[o] * h;
                g[o] += ch; dg[o] += ch * a; lg[o] += ch * L;
            }
        }
    }
    for (o = 0; o < ns_orb; ++o) {
        val[o] = inv_sqrt_4pi * g[o];
        if (grad) {
            const double d = inv_sqrt_4pi * dg[o] * ir;
            grad[3 * o + 0] = d * x; grad[3 * o + 1] = d * y; grad[3 * o + 2] = d * z;
        }
        if (lap) lap[o] = inv_sqrt_4pi * lg[o];
    }

    /* ---- p block (l = 1, m = n-2) ---- */
    if (n_orb > 2) {
        double gp = 0.0, dgp = 0.0, lgp = 0.0;
        const double xc[3] = { x, y, z };
        int c;
        for (k = 0; k < A->np; ++k) {
            const psf__hf_sto_fn *f = &A->p[k];
            const int n = f->n;
            const double ze = f->zeta, tz = 2.0 * ze;
            double nrm = sqrt(tz / fact2n[n]), h;
            int i;
            for (i = 0; i < n; ++i) nrm *= tz;
            h = f->c[0] * nrm * exp(-ze * rr);
            for (i = 2; i < n; ++i) h *= rr;          /* r^(n-2) */
            gp  += h;
            dgp += h * ((double)(n - 2) * ir - ze);
            lgp += h * ((double)(n * (n - 1) - 2) * ir * ir - 2.0 * n * ze * ir + ze * ze);
        }
        gp *= sqrt_3_4pi; dgp *= sqrt_3_4pi; lgp *= sqrt_3_4pi;
        for (c = 0; c < n_orb - 2; ++c) {
            o = 2 + c;
            val[o] = gp * xc[c];
            if (grad) {
                const double d = dgp * ir * xc[c];
                grad[3 * o + 0] = d * x; grad[3 * o + 1] = d * y; grad[3 * o + 2] = d * z;
                grad[3 * o + c] += gp;
            }
            if (lap) lap[o] = lgp * xc[c];
        }
    }
    return 0;
}

static int psf__hf_atom_orbitals(const psf_reference *ref, int spin, const psf_real *x, int n, double *val,
                                 double *grad, double *lap) {
    const double r[3] = {x[0] - ref->center[0], x[1] - ref->center[1], x[2] - ref->center[2]};
    (void)spin; /* restricted HF: both spins share the orbitals */
    if (psf__hf_sto_eval(ref->Z, n, r, val, grad, lap))
        return psf__fail(PSF_ERR_ARG, "psf_reference_hf_atom: Z = %d has no %d occupied orbitals in the table", ref->Z, n);
    return PSF_OK;
}

int psf_reference_hf_atom(psf_reference *ref, const psf_system *sys, double *e_hf) {
    memset(ref, 0, sizeof *ref);
    const int Z = sys->n_atoms == 1 ? (int)sys->Z[0] : 0;
    if (sys->n_atoms != 1 || Z < 1 || Z > 10 || (double)Z != sys->Z[0])
        return psf__fail(PSF_ERR_ARG, "psf_reference_hf_atom: the built-in Hartree-Fock orbitals are for one atom H..Ne");
    const psf__hf_sto_atom *a = &psf__hf_sto_atoms[Z - 1];
    if (sys->n_up != a->n_up || sys->n_down != a->n_down)
        return psf__fail(PSF_ERR_ARG, "psf_reference_hf_atom: %s needs its ground-state spins (%d up, %d down), not %d, %d",
                         a->sym, a->n_up, a->n_down, sys->n_up, sys->n_down);
    ref->n_up = sys->n_up;
    ref->n_down = sys->n_down;
    ref->orbitals = psf__hf_atom_orbitals;
    ref->Z = Z;
    for (int k = 0; k < 3; k++) ref->center[k] = sys->R[0][k];
    if (e_hf) *e_hf = a->e_hf;
    return PSF_OK;
}

/* psi_ref per spin block s (electrons i0..i0+n-1): A_io = phi_o(x_i), log|det A|; with grad, Jacobi's formula:
 * d log|det A| / d x_i = sum_o (A^{-1})_oi grad phi_o(x_i), and (lap det A)/det A = sum_i sum_o (A^{-1})_oi
 * lap phi_o(x_i), so lap log|det A| = that minus |grad log|det A||^2.                                        */
typedef struct { psf_real *A, *lu, *inv; double *val, *grad, *lap; int *piv; } psf__ref_ws;

static double psf__ref_eval(psf_reference *ref, psf__ref_ws *w, const psf_real *x, psf_real *g, psf_real *lap, int *sign) {
    double la = 0, L = 0;
    *sign = 1;
    for (int s = 0; s < 2; s++) {
        const int n = s ? ref->n_down : ref->n_up, i0 = s ? ref->n_up : 0;
        if (n == 0) continue;
        for (int i = 0; i < n; i++) {
            double *gi = w->grad + (size_t)i * 3 * n, *li = w->lap + (size_t)i * n;
            if (ref->orbitals(ref, s, x + 3 * (i0 + i), n, w->val, g ? gi : NULL, g ? li : NULL)) { *sign = 0; return -INFINITY; }
            for (int o = 0; o < n; o++) w->A[(size_t)i * n + o] = w->val[o];
        }
        memcpy(w->lu, w->A, sizeof(psf_real) * (size_t)n * n);
        double l;
        const int sg = psf__lu(n, w->lu, w->piv, &l);
        if (!sg) { *sign = 0; return -INFINITY; }
        *sign *= sg;
        la += l;
        if (!g) continue;
        psf__lu_inverse(n, w->lu, w->piv, w->inv);
        for (int i = 0; i < n; i++) {
            const double *gi = w->grad + (size_t)i * 3 * n, *li = w->lap + (size_t)i * n;
            double gg[3] = {0, 0, 0}, ll = 0;
            for (int o = 0; o < n; o++) {
                const double a = w->inv[(size_t)o * n + i];
                for (int c = 0; c < 3; c++) gg[c] += a * gi[3 * o + c];
                ll += a * li[o];
            }
            for (int c = 0; c < 3; c++) g[3 * (i0 + i) + c] = gg[c];
            L += ll - (gg[0] * gg[0] + gg[1] * gg[1] + gg[2] * gg[2]);
        }
    }
    if (lap) *lap = L;
    return la;
}
static double psf__ref_logpsi(void *ctx, void *ws, const psf_real *x, int *sign) {
    return psf__ref_eval((psf_reference *)ctx, (psf__ref_ws *)ws, x, NULL, NULL, sign);
}
static double psf__ref_jet(void *ctx, void *ws, const psf_real *x, psf_real *g, psf_real *lap, int *sign) {
    return psf__ref_eval((psf_reference *)ctx, (psf__ref_ws *)ws, x, g, lap, sign);
}
static void psf__ref_ws_free(void *ctx, void *ws) {
    psf__ref_ws *w = (psf__ref_ws *)ws;
    (void)ctx;
    if (!w) return;
    PSF_FREE(w->A); PSF_FREE(w->lu); PSF_FREE(w->inv); PSF_FREE(w->val); PSF_FREE(w->grad); PSF_FREE(w->lap); PSF_FREE(w->piv);
    PSF_FREE(w);
}
static void *psf__ref_ws_new(void *ctx) {
    const psf_reference *ref = (const psf_reference *)ctx;
    const size_t n = (size_t)(ref->n_up > ref->n_down ? ref->n_up : ref->n_down) + 1;
    psf__ref_ws *w = (psf__ref_ws *)psf__calloc(1, sizeof *w);
    if (!w) return NULL;
    w->A = (psf_real *)psf__calloc(psf__mul(n, n), sizeof(psf_real));
    w->lu = (psf_real *)psf__calloc(psf__mul(n, n), sizeof(psf_real));
    w->inv = (psf_real *)psf__calloc(psf__mul(n, n), sizeof(psf_real));
    w->val = (double *)psf__calloc(n, sizeof(double));
    w->grad = (double *)psf__calloc(psf__mul(3 * n, n), sizeof(double));
    w->lap = (double *)psf__calloc(psf__mul(n, n), sizeof(double));
    w->piv = (int *)psf__calloc(n, sizeof(int));
    if (!w->A || !w->lu || !w->inv || !w->val || !w->grad || !w->lap || !w->piv) { psf__ref_ws_free(ctx, w); return NULL; }
    return w;
}
psf_wavefunction psf_reference_wavefunction(psf_reference *ref) {
    psf_wavefunction wf = {ref->n_up + ref->n_down, ref, psf__ref_logpsi, psf__ref_jet, psf__ref_ws_new, psf__ref_ws_free,
                           NULL};
    return wf;
}

/* ============================================================================================================
 *  [IMPL: MOLDEN] Molden files: the parser (line by line, every malformed line an error naming it), contracted
 *  Gaussians with value, gradient and Laplacian, the occupied orbitals as a psf_reference
 * ============================================================================================================ */

typedef struct {
    const char *name;                 /* file name for messages                            */
    const char *p, *end;              /* the rest of the text                              */
    int line;                         /* number of the current line (1-based)              */
    char buf[256];                    /* the current line (truncated copy, NUL-terminated) */
    int truncated;
    /* growing arrays */
    int cap_atoms;
    int *atom_num, *shell_line, *shell_atomnum;
    int n_c;                          /* MO coefficients read: (orbital, index, value, line) */
    int *c_mo, *c_idx, *c_line;
    double *c_val;
    int *mo_line;
} psf__md_parser;

static int psf__md_err(psf__md_parser *q, const char *what) {
    return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected %s, got '%s%s'", q->name, q->line, what, q->buf,
                     q->truncated ? "..." : "");
}

/* The next line into q->buf; 0 at the end of the text. */
static int psf__md_next(psf__md_parser *q) {
    if (q->p >= q->end) return 0;
    const char *s = q->p, *e = s;
    while (e < q->end && *e != '\n') e++;
    q->p = e < q->end ? e + 1 : e;
    size_t n = (size_t)(e - s);
    if (n && s[n - 1] == '\r') n--;
    q->truncated = n >= sizeof q->buf;
    if (q->truncated) n = sizeof q->buf - 1;
    for (size_t i = 0; i < n; i++) q->buf[i] = s[i] ? s[i] : ' '; /* a NUL byte reads as a space */
    q->buf[n] = 0;
    q->line++;
    return 1;
}

static const char *psf__md_skip(const char *s) {
    while (*s == ' ' || *s == '\t' || *s == '\f' || *s == '\v') s++;
    return s;
}

/* One whitespace-delimited number at *s (Fortran's D exponent allowed), finite; advances *s. Returns 0 or -1. */
static int psf__md_num(const char **s, double *out) {
    char tok[64];
    const char *a = psf__md_skip(*s);
    size_t n = 0;
    while (a[n] && a[n] != ' ' && a[n] != '\t' && a[n] != '\f' && a[n] != '\v') n++;
    if (n == 0 || n >= sizeof tok) return -1;
    for (size_t i = 0; i < n; i++) tok[i] = (a[i] == 'D' || a[i] == 'd') ? 'E' : a[i];
    tok[n] = 0;
    for (size_t i = 0; i < n; i++) /* plain decimal notation only: no inf, nan, hex */
        if (!strchr("0123456789+-.Ee", tok[i])) return -1;
    char *stop;
    errno = 0;
    const double v = strtod(tok, &stop);
    if (*stop || !isfinite(v) || errno == ERANGE) return -1;
    *out = v;
    *s = a + n;
    return 0;
}

/* An integer in [lo, hi] (written as an integer). */
static int psf__md_int(const char **s, long lo, long hi, long *out) {
    const char *a = psf__md_skip(*s);
    char *stop;
    errno = 0;
    if (!((*a >= '0' && *a <= '9') || *a == '-' || *a == '+')) return -1;
    const long v = strtol(a, &stop, 10);
    if (stop == a || errno == ERANGE || v < lo || v > hi) return -1;
    if (*stop && *stop != ' ' && *stop != '\t' && *stop != '\f' && *stop != '\v') return -1;
    *out = v;
    *s = stop;
    return 0;
}

static int psf__md_eol(const char *s) { return *psf__md_skip(s) == 0; }

/* Array a of `size`-byte elements grown to hold at least n + 1 (a itself when it does); NULL when out of memory
 * (a is then freed). */
static void *psf__md_grow(void *a, int *cap, int n, size_t size) {
    if (n < *cap) return a;
    const int c = *cap ? 2 * *cap : 16;
    void *b = n < INT_MAX / 4 ? psf__calloc((size_t)c, size) : NULL;
    if (b && a) memcpy(b, a, (size_t)n * size);
    PSF_FREE(a);
    *cap = b ? c : 0;
    return b;
}

static int psf__md_ieq(const char *a, const char *b, size_t n) { /* case-insensitive prefix compare */
    for (size_t i = 0; i < n; i++) {
        const int x = a[i] >= 'A' && a[i] <= 'Z' ? a[i] + 32 : a[i], y = b[i] >= 'A' && b[i] <= 'Z' ? b[i] + 32 : b[i];
        if (x != y) return 0;
        if (!x) return 1;
    }
    return 1;
}

void psf_molden_free(psf_molden *mol) {
    if (!mol) return;
    PSF_FREE(mol->R); PSF_FREE(mol->Z); PSF_FREE(mol->shells); PSF_FREE(mol->exps); PSF_FREE(mol->coefs);
    PSF_FREE(mol->norm); PSF_FREE(mol->mo); PSF_FREE(mol->energy); PSF_FREE(mol->occup); PSF_FREE(mol->spin);
    PSF_FREE(mol->occ[0]); PSF_FREE(mol->occ[1]);
    memset(mol, 0, sizeof *mol);
}

static void psf__md_parser_free(psf__md_parser *q) {
    PSF_FREE(q->atom_num); PSF_FREE(q->shell_line); PSF_FREE(q->shell_atomnum);
    PSF_FREE(q->c_mo); PSF_FREE(q->c_idx); PSF_FREE(q->c_line); PSF_FREE(q->c_val); PSF_FREE(q->mo_line);
}

/* (2n - 1)!! for n = 0..7 ((-1)!! = 1) */
static const double psf__md_dfact[8] = {1, 1, 3, 15, 105, 945, 10395, 135135};

enum { PSF__MD_NONE, PSF__MD_ATOMS, PSF__MD_GTO, PSF__MD_MO, PSF__MD_SKIP };

/* Normalisation (see psf_molden), the basis-function offsets from the flags, the orbital matrix, occupations. */
static int psf__md_finish(psf__md_parser *q, psf_molden *mol, int pure_d, int pure_f) {
    const double pi = 3.14159265358979323846;
    for (int s = 0; s < mol->n_shells; s++) {
        psf_molden_shell *sh = &mol->shells[s];
        int a = -1;
        for (int i = 0; i < mol->n_atoms; i++) if (q->atom_num[i] == q->shell_atomnum[s]) { a = i; break; }
        if (a < 0)
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected a shell of an atom that [Atoms] lists, got one of atom %d",
                             q->name, q->shell_line[s], q->shell_atomnum[s]);
        sh->atom = a;
        sh->pure = sh->l == 2 ? pure_d : sh->l == 3 ? pure_f : 0;
        sh->bf0 = mol->n_bf;
        const int nf = sh->pure ? 2 * sh->l + 1 : (sh->l + 1) * (sh->l + 2) / 2;
        if (mol->n_bf > 1000000) return psf__fail(PSF_ERR_FORMAT, "%s: expected at most 10^6 basis functions", q->name);
        mol->n_bf += nf;
        const double e = sh->l + 1.5;
        double S = 0;
        for (int i = 0; i < sh->n_prim; i++)
            for (int j = 0; j < sh->n_prim; j++) {
                const double ai = mol->exps[sh->p0 + i], aj = mol->exps[sh->p0 + j];
                S += mol->coefs[sh->p0 + i] * mol->coefs[sh->p0 + j] * pow(2 * sqrt(ai * aj) / (ai + aj), e);
            }
        if (!(S > 0) || !isfinite(S))
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected a contraction with a nonzero norm, got coefficients whose norm is %g",
                             q->name, q->shell_line[s], S);
        for (int i = 0; i < sh->n_prim; i++) {
            const double a2 = 2 * mol->exps[sh->p0 + i];
            const double N2 = pow(2.0, sh->l + 2) * pow(a2, sh->l + 1) * sqrt(a2 / pi) / psf__md_dfact[sh->l + 1];
            mol->norm[sh->p0 + i] = mol->coefs[sh->p0 + i] * sqrt(N2 / S);
            if (!isfinite(mol->norm[sh->p0 + i]))
                return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected exponents and coefficients with finite normalised values",
                                 q->name, q->shell_line[s]);
        }
    }
    if (mol->n_bf == 0) return psf__fail(PSF_ERR_FORMAT, "%s: expected a [GTO] section with at least one shell", q->name);
    if ((size_t)mol->n_mo * (size_t)mol->n_bf > ((size_t)1 << 27))
        return psf__fail(PSF_ERR_FORMAT, "%s: expected at most 2^27 orbital coefficients, got %d orbitals x %d basis functions",
                         q->name, mol->n_mo, mol->n_bf);
    mol->mo = (double *)psf__calloc((size_t)mol->n_mo * (size_t)mol->n_bf, sizeof(double));
    unsigned char *seen = (unsigned char *)psf__calloc((size_t)mol->n_mo * (size_t)mol->n_bf, 1);
    if (!mol->mo || !seen) { PSF_FREE(seen); return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", q->name); }
    for (int c = 0; c < q->n_c; c++) {
        if (q->c_idx[c] > mol->n_bf) {
            PSF_FREE(seen);
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected an orbital coefficient index 1..%d (the basis functions of [GTO]), got %d",
                             q->name, q->c_line[c], mol->n_bf, q->c_idx[c]);
        }
        const size_t at = (size_t)q->c_mo[c] * mol->n_bf + (size_t)(q->c_idx[c] - 1);
        if (seen[at]) {
            PSF_FREE(seen);
            return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected each coefficient index once per orbital, got index %d again",
                             q->name, q->c_line[c], q->c_idx[c]);
        }
        seen[at] = 1;
        mol->mo[at] = q->c_val[c];
    }
    PSF_FREE(seen);
    for (int k = 0; k < mol->n_mo; k++) if (mol->spin[k]) mol->unrestricted = 1;
    mol->occ[0] = (int *)psf__calloc((size_t)mol->n_mo + 1, sizeof(int));
    mol->occ[1] = (int *)psf__calloc((size_t)mol->n_mo + 1, sizeof(int));
    if (!mol->occ[0] || !mol->occ[1]) return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", q->name);
    for (int k = 0; k < mol->n_mo; k++) {
        const double o = mol->occup[k];
        const int n = o > -0.5 && o < 2.5 ? (int)floor(o + 0.5) : -1; /* (int) of 1e80 would be undefined */
        if (n < 0 || fabs(o - n) > 1e-6 || n > (mol->unrestricted ? 1 : 2)) { if (!mol->fractional) mol->fractional = k + 1; continue; }
        if (mol->unrestricted) { if (n == 1) mol->occ[mol->spin[k]][mol->n_occ[mol->spin[k]]++] = k; }
        else {
            if (n >= 1) mol->occ[0][mol->n_occ[0]++] = k;
            if (n == 2) mol->occ[1][mol->n_occ[1]++] = k;
        }
    }
    return PSF_OK;
}

static int psf__md_parse(psf__md_parser *q, psf_molden *mol) {
    const double bohr_per_angstrom = 1 / 0.529177210903; /* CODATA 2018 */
    int section = PSF__MD_NONE, seen_atoms = 0, seen_gto = 0, seen_mo = 0, pure_d = 0, pure_f = 0;
    double unit = 1;
    int gto_atom = -1;   /* the [GTO] atom being read (its number in [Atoms]), -1: none yet */
    int mo_has_coef = 0; /* the current orbital has coefficient lines (the next key starts a new one) */
    int mo_occ_set = 0, mo_line = 0;
    int cap_R = 0, cap_Z = 0, cap_sh = 0, cap_e = 0, cap_c = 0, cap_n = 0, cap_en = 0, cap_oc = 0, cap_sp = 0, cap_ml = 0;
    int cap_shl = 0, cap_sha = 0, cap_cm = 0, cap_ci = 0, cap_cl = 0, cap_cv = 0;
#define PSF__MD_GROW(arr, cap, n, type) \
    if (!((arr) = (type *)psf__md_grow((arr), &(cap), (n), sizeof(type)))) return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", q->name)
    while (psf__md_next(q)) {
        const char *s = psf__md_skip(q->buf);
        if (*s == '[') {
            const char *close = strchr(s, ']');
            if (!close) return psf__md_err(q, "a section name in brackets, [NAME]");
            const size_t n = (size_t)(close - s - 1);
            const char *nm = s + 1, *rest = psf__md_skip(close + 1);
            if (section == PSF__MD_MO && mo_line && !mo_occ_set) {
                return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected an Occup= line for the orbital that starts here", q->name, mo_line);
            }
#define PSF__MD_IS(lit) (n == sizeof(lit) - 1 && psf__md_ieq(nm, lit, n))
            if (PSF__MD_IS("Atoms")) {
                if (seen_atoms) return psf__md_err(q, "one [Atoms] section");
                seen_atoms = 1;
                section = PSF__MD_ATOMS;
                if (psf__md_ieq(rest, "AU", 2) || psf__md_ieq(rest, "(AU)", 4) || psf__md_ieq(rest, "bohr", 4)) unit = 1;
                else if (psf__md_ieq(rest, "Ang", 3) || psf__md_ieq(rest, "(Ang", 4)) unit = bohr_per_angstrom;
                else return psf__md_err(q, "[Atoms] AU or [Atoms] Angs (the unit of the coordinates)");
            } else if (PSF__MD_IS("GTO")) {
                if (seen_gto) return psf__md_err(q, "one [GTO] section");
                seen_gto = 1;
                section = PSF__MD_GTO;
                gto_atom = -1;
            } else if (PSF__MD_IS("MO")) {
                if (seen_mo) return psf__md_err(q, "one [MO] section");
                seen_mo = 1;
                section = PSF__MD_MO;
                mo_has_coef = 1; /* so that the first key line starts orbital 1 */
                mo_line = 0;
            } else if (PSF__MD_IS("5D") || PSF__MD_IS("5D7F")) { pure_d = pure_f = 1; section = PSF__MD_NONE; }
            else if (PSF__MD_IS("5D10F")) { pure_d = 1; pure_f = 0; section = PSF__MD_NONE; }
            else if (PSF__MD_IS("7F")) { pure_f = 1; section = PSF__MD_NONE; } /* d as before: PySCF writes [5d] [7f] */
            else if (PSF__MD_IS("10F")) { pure_f = 0; section = PSF__MD_NONE; }
            else if (PSF__MD_IS("6D")) { pure_d = 0; section = PSF__MD_NONE; }
            else if (PSF__MD_IS("6D10F")) { pure_d = pure_f = 0; section = PSF__MD_NONE; }
            else if (PSF__MD_IS("9G") || PSF__MD_IS("15G")) section = PSF__MD_NONE; /* g shells are refused where they appear */
            else section = PSF__MD_SKIP;
#undef PSF__MD_IS
            continue;
        }
        if (section == PSF__MD_NONE || section == PSF__MD_SKIP) continue;
        if (*s == 0) { if (section == PSF__MD_GTO) gto_atom = -1; continue; } /* a blank line ends a [GTO] atom */
        if (q->truncated) return psf__md_err(q, "a line shorter than 255 characters");
        if (section == PSF__MD_ATOMS) {
            /* name number Z x y z */
            const char *t = s;
            while (*t && *t != ' ' && *t != '\t') t++;
            long num, Zi;
            double Z = 0, x[3];
            if (psf__md_int(&t, 1, INT_MAX, &num) || psf__md_int(&t, 0, 200, &Zi) || psf__md_num(&t, &x[0]) ||
                psf__md_num(&t, &x[1]) || psf__md_num(&t, &x[2]) || !psf__md_eol(t))
                return psf__md_err(q, "an atom line 'name number Z x y z' (number >= 1, Z in 0..200, coordinates)");
            Z = (double)Zi;
            for (int i = 0; i < mol->n_atoms; i++)
                if (q->atom_num[i] == (int)num) return psf__md_err(q, "a new atom number (each atom's number once)");
            const int k = mol->n_atoms;
            PSF__MD_GROW(mol->R, cap_R, 3 * k + 2, double);
            PSF__MD_GROW(mol->Z, cap_Z, k, double);
            PSF__MD_GROW(q->atom_num, q->cap_atoms, k, int);
            for (int c = 0; c < 3; c++) mol->R[3 * k + c] = x[c] * unit;
            mol->Z[k] = Z;
            q->atom_num[k] = (int)num;
            mol->n_atoms++;
        } else if (section == PSF__MD_GTO) {
            const char *t = s;
            if (gto_atom < 0) {
                long num, zero;
                if (psf__md_int(&t, 1, INT_MAX, &num) || (!psf__md_eol(t) && (psf__md_int(&t, 0, 0, &zero) || !psf__md_eol(t))))
                    return psf__md_err(q, "a [GTO] atom line 'atom_number 0'");
                gto_atom = (int)num;
                continue;
            }
            /* shell line: label n_prim [scale] */
            char lab[4] = {0};
            int nl = 0;
            while (*t && *t != ' ' && *t != '\t' && nl < 3) { lab[nl++] = (char)(*t >= 'A' && *t <= 'Z' ? *t + 32 : *t); t++; }
            int l = -1, sp = 0;
            if (*t == ' ' || *t == '\t') {
                if (!strcmp(lab, "s")) l = 0;
                else if (!strcmp(lab, "p")) l = 1;
                else if (!strcmp(lab, "d")) l = 2;
                else if (!strcmp(lab, "f")) l = 3;
                else if (!strcmp(lab, "sp")) { l = 0; sp = 1; }
            }
            long np;
            double scale = 1;
            if (l < 0 || psf__md_int(&t, 1, 1000, &np) || (!psf__md_eol(t) && (psf__md_num(&t, &scale) || !psf__md_eol(t))) ||
                !(scale > 0))
                return psf__md_err(q, "a shell line 'label n_primitives [scale]' (label s, p, d, f or sp; 1..1000 "
                                      "primitives; a positive scale) or a blank line");
            const int sh_line = q->line;
            for (int part = 0; part <= sp; part++) {
                const int k = mol->n_shells;
                PSF__MD_GROW(mol->shells, cap_sh, k, psf_molden_shell);
                PSF__MD_GROW(q->shell_line, cap_shl, k, int);
                PSF__MD_GROW(q->shell_atomnum, cap_sha, k, int);
                mol->shells[k].l = part ? 1 : l;
                mol->shells[k].n_prim = (int)np;
                mol->shells[k].p0 = mol->n_prims + part * (int)np;
                q->shell_line[k] = sh_line;
                q->shell_atomnum[k] = gto_atom;
                mol->n_shells++;
            }
            for (int i = 0; i < (sp + 1) * (int)np; i++) {
                PSF__MD_GROW(mol->exps, cap_e, mol->n_prims + i, double);
                PSF__MD_GROW(mol->coefs, cap_c, mol->n_prims + i, double);
                PSF__MD_GROW(mol->norm, cap_n, mol->n_prims + i, double);
            }
            for (int i = 0; i < (int)np; i++) {
                if (!psf__md_next(q)) {
                    q->buf[0] = 0;
                    return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected %ld primitive lines after the shell line %d, got the end of the file",
                                     q->name, q->line + 1, np, sh_line);
                }
                const char *u = q->buf;
                double a, c, c2 = 0;
                if (q->truncated || psf__md_num(&u, &a) || psf__md_num(&u, &c) || (sp && psf__md_num(&u, &c2)) ||
                    !psf__md_eol(u) || !(a > 0))
                    return psf__md_err(q, sp ? "a primitive line 'exponent s_coefficient p_coefficient' (exponent > 0)"
                                             : "a primitive line 'exponent coefficient' (exponent > 0)");
                if (!isfinite(a * scale * scale)) return psf__md_err(q, "an exponent whose scaled value is finite");
                mol->exps[mol->n_prims + i] = a * scale * scale;
                mol->coefs[mol->n_prims + i] = c;
                if (sp) { mol->exps[mol->n_prims + np + i] = a * scale * scale; mol->coefs[mol->n_prims + np + i] = c2; }
            }
            mol->n_prims += (sp + 1) * (int)np;
        } else { /* [MO] */
            const char *eq = strchr(s, '=');
            if (eq) {
                if (mo_has_coef) { /* a new orbital */
                    if (mo_line && !mo_occ_set)
                        return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected an Occup= line for the orbital that starts here", q->name, mo_line);
                    const int k = mol->n_mo;
                    PSF__MD_GROW(mol->energy, cap_en, k, double);
                    PSF__MD_GROW(mol->occup, cap_oc, k, double);
                    PSF__MD_GROW(mol->spin, cap_sp, k, int);
                    PSF__MD_GROW(q->mo_line, cap_ml, k, int);
                    mol->energy[k] = 0; mol->occup[k] = 0; mol->spin[k] = 0;
                    q->mo_line[k] = q->line;
                    mol->n_mo++;
                    mo_has_coef = 0; mo_occ_set = 0; mo_line = q->line;
                }
                const int k = mol->n_mo - 1;
                const size_t kn = (size_t)(eq - s);
                const char *v = eq + 1;
                size_t kl = kn;
                while (kl && (s[kl - 1] == ' ' || s[kl - 1] == '\t')) kl--;
                if (kl == 3 && psf__md_ieq(s, "Sym", 3)) { /* any label */ }
                else if (kl == 3 && psf__md_ieq(s, "Ene", 3)) {
                    if (psf__md_num(&v, &mol->energy[k]) || !psf__md_eol(v)) return psf__md_err(q, "'Ene= number'");
                } else if (kl == 4 && psf__md_ieq(s, "Spin", 4)) {
                    const char *w = psf__md_skip(v);
                    size_t wl = 0;
                    while (w[wl] && w[wl] != ' ' && w[wl] != '\t') wl++;
                    if (wl == 5 && psf__md_ieq(w, "Alpha", 5)) mol->spin[k] = 0;
                    else if (wl == 4 && psf__md_ieq(w, "Beta", 4)) mol->spin[k] = 1;
                    else return psf__md_err(q, "'Spin= Alpha' or 'Spin= Beta'");
                    if (!psf__md_eol(w + wl)) return psf__md_err(q, "'Spin= Alpha' or 'Spin= Beta'");
                } else if (kl == 5 && psf__md_ieq(s, "Occup", 5)) {
                    if (psf__md_num(&v, &mol->occup[k]) || !psf__md_eol(v) || mol->occup[k] < 0)
                        return psf__md_err(q, "'Occup= number' (not negative)");
                    mo_occ_set = 1;
                } else return psf__md_err(q, "an orbital key Sym=, Ene=, Spin= or Occup=");
                continue;
            }
            if (mol->n_mo == 0) return psf__md_err(q, "an orbital's Sym=, Ene=, Spin= or Occup= line before its coefficients");
            const char *t = s;
            long idx;
            double c;
            if (psf__md_int(&t, 1, INT_MAX, &idx) || psf__md_num(&t, &c) || !psf__md_eol(t))
                return psf__md_err(q, "an orbital coefficient line 'index coefficient' (index >= 1) or a key line");
            mo_has_coef = 1;
            const int n = q->n_c;
            PSF__MD_GROW(q->c_mo, cap_cm, n, int);
            PSF__MD_GROW(q->c_idx, cap_ci, n, int);
            PSF__MD_GROW(q->c_line, cap_cl, n, int);
            PSF__MD_GROW(q->c_val, cap_cv, n, double);
            q->c_mo[n] = mol->n_mo - 1; q->c_idx[n] = (int)idx; q->c_line[n] = q->line; q->c_val[n] = c;
            q->n_c++;
        }
    }
#undef PSF__MD_GROW
    if (section == PSF__MD_MO && mo_line && !mo_occ_set)
        return psf__fail(PSF_ERR_FORMAT, "%s:%d: expected an Occup= line for the orbital that starts here", q->name, mo_line);
    if (!seen_atoms || mol->n_atoms == 0) return psf__fail(PSF_ERR_FORMAT, "%s: expected an [Atoms] section with at least one atom", q->name);
    if (!seen_gto) return psf__fail(PSF_ERR_FORMAT, "%s: expected a [GTO] section", q->name);
    if (!seen_mo || mol->n_mo == 0) return psf__fail(PSF_ERR_FORMAT, "%s: expected an [MO] section with at least one orbital", q->name);
    return psf__md_finish(q, mol, pure_d, pure_f);
}

int psf_molden_parse(psf_molden *mol, const char *text, size_t len, const char *name) {
    memset(mol, 0, sizeof *mol);
    psf__md_parser q;
    memset(&q, 0, sizeof q);
    q.name = name ? name : "(molden)";
    q.p = text;
    q.end = text + len;
    const int rc = text || !len ? psf__md_parse(&q, mol) : psf__fail(PSF_ERR_ARG, "psf_molden_parse: no text");
    psf__md_parser_free(&q);
    if (rc) psf_molden_free(mol);
    return rc;
}

int psf_molden_load(psf_molden *mol, const char *path) {
    memset(mol, 0, sizeof *mol);
    FILE *f = fopen(path, "rb");
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = (char *)PSF_MALLOC(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *b = cap < ((size_t)1 << 34) ? (char *)PSF_MALLOC(2 * cap) : NULL;
        if (b) memcpy(b, buf, n);
        PSF_FREE(buf);
        buf = b;
        cap *= 2;
    }
    const int bad = ferror(f);
    fclose(f);
    if (!buf) return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", path);
    if (bad) { PSF_FREE(buf); return psf__fail(PSF_ERR_IO, "%s: read error", path); }
    const int rc = psf_molden_parse(mol, buf, n, path);
    PSF_FREE(buf);
    return rc;
}

/* The angular factors P of one shell: up to 10 functions, each a sum of up to 3 terms c x^i y^j z^k (see
 * psf_molden for the conventions). Returns the number of functions. */
typedef struct { int n; double c[3]; unsigned char e[3][3]; } psf__md_poly;

static int psf__md_angular(int l, int pure, psf__md_poly *P) {
    static const unsigned char cart[4][10][3] = {
        {{0, 0, 0}},
        {{1, 0, 0}, {0, 1, 0}, {0, 0, 1}},
        {{2, 0, 0}, {0, 2, 0}, {0, 0, 2}, {1, 1, 0}, {1, 0, 1}, {0, 1, 1}},
        {{3, 0, 0}, {0, 3, 0}, {0, 0, 3}, {1, 2, 0}, {2, 1, 0}, {2, 0, 1}, {1, 0, 2}, {0, 1, 2}, {0, 2, 1}, {1, 1, 1}}};
    const double pi = 3.14159265358979323846;
    if (!pure || l < 2) {
        const int n = (l + 1) * (l + 2) / 2;
        for (int f = 0; f < n; f++) {
            const unsigned char *e = cart[l][f];
            P[f].n = 1;
            memcpy(P[f].e[0], e, 3);
            P[f].c[0] = sqrt((2 * l + 1) / (4 * pi)); /* x^l's factor for every component (see psf_molden) */
        }
        return n;
    }
    /* real solid harmonics r^l Y_lm, Y normalised on the unit sphere, Molden's order m = 0, +1, -1, +2, -2, ... */
#define PSF__T(F, K, C, I, J, L) (P[F].c[K] = (C), P[F].e[K][0] = (I), P[F].e[K][1] = (J), P[F].e[K][2] = (L))
    if (l == 2) {
        const double a = 0.25 * sqrt(5 / pi), b = 0.5 * sqrt(15 / pi), c = 0.25 * sqrt(15 / pi);
        P[0].n = 3; PSF__T(0, 0, 2 * a, 0, 0, 2); PSF__T(0, 1, -a, 2, 0, 0); PSF__T(0, 2, -a, 0, 2, 0); /* D0  */
        P[1].n = 1; PSF__T(1, 0, b, 1, 0, 1);                                                        /* D+1 xz */
        P[2].n = 1; PSF__T(2, 0, b, 0, 1, 1);                                                        /* D-1 yz */
        P[3].n = 2; PSF__T(3, 0, c, 2, 0, 0); PSF__T(3, 1, -c, 0, 2, 0);                             /* D+2 x2-y2 */
        P[4].n = 1; PSF__T(4, 0, b, 1, 1, 0);                                                        /* D-2 xy */
        return 5;
    }
    {
        const double a = 0.25 * sqrt(7 / pi), b = 0.25 * sqrt(21 / (2 * pi)), c = 0.25 * sqrt(105 / pi),
                     d = 0.5 * sqrt(105 / pi), e = 0.25 * sqrt(35 / (2 * pi));
        P[0].n = 3; PSF__T(0, 0, 2 * a, 0, 0, 3); PSF__T(0, 1, -3 * a, 2, 0, 1); PSF__T(0, 2, -3 * a, 0, 2, 1); /* F0 */
        P[1].n = 3; PSF__T(1, 0, 4 * b, 1, 0, 2); PSF__T(1, 1, -b, 3, 0, 0); PSF__T(1, 2, -b, 1, 2, 0);         /* F+1 */
        P[2].n = 3; PSF__T(2, 0, 4 * b, 0, 1, 2); PSF__T(2, 1, -b, 2, 1, 0); PSF__T(2, 2, -b, 0, 3, 0);         /* F-1 */
        P[3].n = 2; PSF__T(3, 0, c, 2, 0, 1); PSF__T(3, 1, -c, 0, 2, 1);                                        /* F+2 */
        P[4].n = 1; PSF__T(4, 0, d, 1, 1, 1);                                                                   /* F-2 */
        P[5].n = 2; PSF__T(5, 0, e, 3, 0, 0); PSF__T(5, 1, -3 * e, 1, 2, 0);                                    /* F+3 */
        P[6].n = 2; PSF__T(6, 0, 3 * e, 2, 1, 0); PSF__T(6, 1, -e, 0, 3, 0);                                    /* F-3 */
        return 7;
    }
#undef PSF__T
}

/* The functions of shell sh at x: v[nf], g[3 nf], L[nf] (g, L when want_d). chi = P R(r^2): grad chi = grad P R +
 * 2 r P R', lap chi = lap P R + P (4 l R' + 6 R' + 4 r^2 R'') by Euler's theorem (r . grad P = l P), with
 * R' = dR/d(r^2) = -sum a d e^{-a r^2}, R'' = sum a^2 d e^{-a r^2}. */
static int psf__md_shell(const psf_molden *mol, const psf_molden_shell *sh, const psf_real *x, int want_d,
                         double *v, double *g, double *L) {
    const double *A = mol->R + 3 * sh->atom;
    const double r[3] = {x[0] - A[0], x[1] - A[1], x[2] - A[2]}, r2 = r[0] * r[0] + r[1] * r[1] + r[2] * r[2];
    double R = 0, R1 = 0, R2 = 0;
    for (int p = sh->p0; p < sh->p0 + sh->n_prim; p++) {
        const double a = mol->exps[p], t = mol->norm[p] * exp(-a * r2);
        R += t; R1 -= a * t; R2 += a * a * t;
    }
    psf__md_poly P[10];
    const int nf = psf__md_angular(sh->l, sh->pure, P);
    double pw[3][4];
    for (int c = 0; c < 3; c++) { pw[c][0] = 1; pw[c][1] = r[c]; pw[c][2] = r[c] * r[c]; pw[c][3] = pw[c][2] * r[c]; }
    const double radial_lap = (4 * sh->l + 6) * R1 + 4 * r2 * R2;
    for (int f = 0; f < nf; f++) {
        double pv = 0, pg[3] = {0, 0, 0}, pl = 0;
        for (int t = 0; t < P[f].n; t++) {
            const unsigned char *e = P[f].e[t];
            const double c = P[f].c[t];
            pv += c * pw[0][e[0]] * pw[1][e[1]] * pw[2][e[2]];
            if (!want_d) continue;
            for (int k = 0; k < 3; k++) {
                if (!e[k]) continue;
                const int k1 = (k + 1) % 3, k2 = (k + 2) % 3;
                pg[k] += c * e[k] * pw[k][e[k] - 1] * pw[k1][e[k1]] * pw[k2][e[k2]];
                if (e[k] >= 2) pl += c * e[k] * (e[k] - 1) * pw[k][e[k] - 2] * pw[k1][e[k1]] * pw[k2][e[k2]];
            }
        }
        v[f] = pv * R;
        if (!want_d) continue;
        for (int k = 0; k < 3; k++) g[3 * f + k] = pg[k] * R + 2 * r[k] * pv * R1;
        L[f] = pl * R + pv * radial_lap;
    }
    return nf;
}

void psf_molden_basis(const psf_molden *mol, const psf_real *x, double *val, double *grad, double *lap) {
    double v[10], g[30], L[10];
    for (int s = 0; s < mol->n_shells; s++) {
        const psf_molden_shell *sh = &mol->shells[s];
        const int nf = psf__md_shell(mol, sh, x, grad || lap, v, g, L);
        for (int f = 0; f < nf; f++) {
            val[sh->bf0 + f] = v[f];
            if (grad) for (int k = 0; k < 3; k++) grad[3 * (sh->bf0 + f) + k] = g[3 * f + k];
            if (lap) lap[sh->bf0 + f] = L[f];
        }
    }
}

static int psf__md_check_occ(const psf_molden *mol, const char *who) {
    if (mol->fractional)
        return psf__fail(PSF_ERR_ARG, "%s: orbital %d has Occup= %g; a determinant needs occupations 0 or 1%s", who,
                         mol->fractional, mol->occup[mol->fractional - 1], mol->unrestricted ? "" : " or 2 (restricted)");
    if (mol->n_occ[0] + mol->n_occ[1] > PSF_MAX_ELEC)
        return psf__fail(PSF_ERR_ARG, "%s: %d electrons, more than PSF_MAX_ELEC = %d", who, mol->n_occ[0] + mol->n_occ[1], PSF_MAX_ELEC);
    if (mol->n_occ[0] + mol->n_occ[1] == 0) return psf__fail(PSF_ERR_ARG, "%s: no occupied orbitals", who);
    return PSF_OK;
}

int psf_molden_system(const psf_molden *mol, psf_system *sys) {
    memset(sys, 0, sizeof *sys);
    int rc = psf__md_check_occ(mol, "psf_molden_system");
    if (rc) return rc;
    if (mol->n_atoms < 1 || mol->n_atoms > PSF_MAX_ATOMS)
        return psf__fail(PSF_ERR_ARG, "psf_molden_system: %d atoms, more than PSF_MAX_ATOMS = %d (or none)", mol->n_atoms, PSF_MAX_ATOMS);
    for (int a = 0; a < mol->n_atoms; a++) {
        if (!(mol->Z[a] >= 1)) return psf__fail(PSF_ERR_ARG, "psf_molden_system: atom %d has charge %g (ghost atoms are not supported)", a + 1, mol->Z[a]);
        for (int c = 0; c < 3; c++) sys->R[a][c] = mol->R[3 * a + c];
        sys->Z[a] = mol->Z[a];
    }
    sys->n_atoms = mol->n_atoms;
    sys->n_up = mol->n_occ[0];
    sys->n_down = mol->n_occ[1];
    return PSF_OK;
}

static int psf__md_orbitals(const psf_reference *ref, int spin, const psf_real *x, int n, double *val, double *grad,
                            double *lap) {
    const psf_molden *mol = (const psf_molden *)ref->ctx;
    if (spin < 0 || spin > 1 || n > mol->n_occ[spin])
        return psf__fail(PSF_ERR_ARG, "psf_reference_molden: %d orbitals of spin %d asked for, %d occupied", n, spin,
                         spin == 0 || spin == 1 ? mol->n_occ[spin] : 0);
    const int d = grad || lap;
    for (int o = 0; o < n; o++) {
        val[o] = 0;
        if (grad) grad[3 * o] = grad[3 * o + 1] = grad[3 * o + 2] = 0;
        if (lap) lap[o] = 0;
    }
    double v[10], g[30], L[10];
    for (int s = 0; s < mol->n_shells; s++) {
        const psf_molden_shell *sh = &mol->shells[s];
        const int nf = psf__md_shell(mol, sh, x, d, v, g, L);
        for (int o = 0; o < n; o++) {
            const double *C = mol->mo + (size_t)mol->occ[spin][o] * mol->n_bf + sh->bf0;
            double cv = 0, cg[3] = {0, 0, 0}, cl = 0;
            for (int f = 0; f < nf; f++) {
                cv += C[f] * v[f];
                if (!d) continue;
                cg[0] += C[f] * g[3 * f]; cg[1] += C[f] * g[3 * f + 1]; cg[2] += C[f] * g[3 * f + 2];
                cl += C[f] * L[f];
            }
            val[o] += cv;
            if (grad) { grad[3 * o] += cg[0]; grad[3 * o + 1] += cg[1]; grad[3 * o + 2] += cg[2]; }
            if (lap) lap[o] += cl;
        }
    }
    return PSF_OK;
}

int psf_reference_molden(psf_reference *ref, const psf_molden *mol) {
    memset(ref, 0, sizeof *ref);
    const int rc = psf__md_check_occ(mol, "psf_reference_molden");
    if (rc) return rc;
    ref->n_up = mol->n_occ[0];
    ref->n_down = mol->n_occ[1];
    ref->orbitals = psf__md_orbitals;
    ref->ctx = (void *)mol;
    return PSF_OK;
}

/* ============================================================================================================
 *  [IMPL: SAMPLER] Metropolis–Hastings on |psi|^2 (Metropolis et al. 1953), all-electron Gaussian proposals,
 *  one RNG stream per walker so that the chain does not depend on how walkers are shared among threads.
 * ============================================================================================================ */

/* The bytes psf_walkers_init allocates for n_walkers walkers of n_elec electrons (keep in step with it). */
static size_t psf__walkers_bytes(int n_elec, int n_walkers) {
    size_t b = psf__alloc_bytes(psf__mul((size_t)n_walkers, 3 * (size_t)n_elec), sizeof(psf_real));
    b = psf__add(b, psf__alloc_bytes((size_t)n_walkers, sizeof(double)));
    b = psf__add(b, psf__alloc_bytes((size_t)n_walkers, sizeof(int)));
    return psf__add(b, psf__alloc_bytes((size_t)n_walkers, sizeof(psf_rng)));
}

int psf_walkers_init(psf_walkers *w, const psf_system *sys, int n_walkers, uint64_t seed) {
    memset(w, 0, sizeof *w);
    const int N = sys->n_up + sys->n_down;
    if (n_walkers < 1) return psf__fail(PSF_ERR_ARG, "psf_walkers_init: n_walkers = %d must be positive", n_walkers);
    w->n_walkers = n_walkers;
    w->n_elec = N;
    w->x = (psf_real *)psf__calloc(psf__mul((size_t)n_walkers, 3 * (size_t)N), sizeof(psf_real));
    w->logpsi = (double *)psf__calloc((size_t)n_walkers, sizeof(double));
    w->sign = (int *)psf__calloc((size_t)n_walkers, sizeof(int));
    w->rng = (psf_rng *)psf__calloc((size_t)n_walkers, sizeof(psf_rng));
    if (!w->x || !w->logpsi || !w->sign || !w->rng) { psf_walkers_free(w); return psf__fail(PSF_ERR_NOMEM, "psf_walkers_init: out of memory"); }
    w->width = 0.2;
    w->nuclei = *sys;
    w->lo = 0;
    w->hi = n_walkers;
    /* assign electrons to atoms: up electrons first, then down, filling atoms in order of remaining charge */
    int owner[PSF_MAX_ELEC];
    double left[PSF_MAX_ATOMS];
    for (int at = 0; at < sys->n_atoms; at++) left[at] = sys->Z[at];
    for (int i = 0; i < N; i++) {
        int best = 0;
        for (int at = 1; at < sys->n_atoms; at++) if (left[at] > left[best]) best = at;
        owner[i] = best;
        left[best] -= 1;
    }
    for (int b = 0; b < n_walkers; b++) {
        psf_rng_seed(&w->rng[b], seed, 0x1000000ULL + (uint64_t)b);
        for (int i = 0; i < N; i++)
            for (int k = 0; k < 3; k++) w->x[((size_t)b * N + i) * 3 + k] = sys->R[owner[i]][k] + psf_rng_normal(&w->rng[b]);
    }
    return PSF_OK;
}

void psf_walkers_free(psf_walkers *w) {
    PSF_FREE(w->x); PSF_FREE(w->logpsi); PSF_FREE(w->sign); PSF_FREE(w->rng);
    memset(w, 0, sizeof *w);
}

/* One workspace per OpenMP thread: the parallel loops below index ws by the thread number. */
static int psf__check_ws(const char *fn, int n_ws) {
    if (n_ws < psf__max_threads())
        return psf__fail(PSF_ERR_ARG, "%s: %d workspaces for %d OpenMP threads (one per thread is needed)", fn, n_ws, psf__max_threads());
    return PSF_OK;
}

/* The walkers this process moves: lo..hi-1 (hi <= lo: all). */
static void psf__walker_range(const psf_walkers *w, int *lo, int *hi) {
    const int ok = w->hi > w->lo && w->lo >= 0 && w->hi <= w->n_walkers;
    *lo = ok ? w->lo : 0;
    *hi = ok ? w->hi : w->n_walkers;
}

int psf_walkers_refresh(psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws) {
    const int D = 3 * w->n_elec;
    const int rc = psf__check_ws("psf_walkers_refresh", n_ws);
    if (rc) return rc;
    int lo, hi;
    psf__walker_range(w, &lo, &hi);
    const int nb = wf->logpsi_block ? PSF__WALKER_BLOCK : 1, nblk = (hi - lo + nb - 1) / nb;
PSF__OMP(parallel for schedule(dynamic, 1))
    for (int j = 0; j < nblk; j++) {
        const int b0 = lo + j * nb, n = hi - b0 < nb ? hi - b0 : nb;
        void *wsp = ws[psf__thread_id()];
        if (wf->logpsi_block) wf->logpsi_block(wf->ctx, wsp, n, w->x + (size_t)b0 * D, w->logpsi + b0, w->sign + b0);
        else w->logpsi[b0] = wf->logpsi(wf->ctx, wsp, w->x + (size_t)b0 * D, &w->sign[b0]);
    }
    return PSF_OK;
}

/* h_i of the scaled moves: min(harmonic mean of the distances to the nuclei, 2) + 0.5 / Z_max (bohr). */
static double psf__move_scale(const psf_system *sys, const psf_real *xi) {
    double inv = 0, zmax = 1, r[3];
    for (int at = 0; at < sys->n_atoms; at++) {
        inv += 1.0 / psf__dist(sys->R[at], xi, r);
        if (sys->Z[at] > zmax) zmax = sys->Z[at];
    }
    const double d = sys->n_atoms / inv;
    return (d < 2.0 ? d : 2.0) + 0.5 / zmax;
}

/* The walkers go in blocks of PSF__WALKER_BLOCK through wf->logpsi_block (one at a time without it). Each
 * walker draws from its own stream in the same order as alone (its proposal, then its acceptance), and a block's
 * log|psi| are those of single calls, so the chains are the same bits with or without blocks, for any thread
 * count, and the blocks only change the speed. */
double psf_mcmc(psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws, int n_steps) {
    const int D = 3 * w->n_elec;
    long acc = 0;
    const double width = w->width;
    if (psf__check_ws("psf_mcmc", n_ws)) return -1.0;
    int lo, hi;
    psf__walker_range(w, &lo, &hi);
    const int B = hi - lo, nb = wf->logpsi_block ? PSF__WALKER_BLOCK : 1, nblk = (B + nb - 1) / nb;
PSF__OMP(parallel for schedule(dynamic, 1) reduction(+ : acc))
    for (int j = 0; j < nblk; j++) {
        psf_real prop[PSF__WALKER_BLOCK * 3 * PSF_MAX_ELEC];
        double lp[PSF__WALKER_BLOCK], lq[PSF__WALKER_BLOCK];
        int sg[PSF__WALKER_BLOCK];
        const int b0 = lo + j * nb, n = hi - b0 < nb ? hi - b0 : nb;
        void *wsp = ws[psf__thread_id()];
        for (int s = 0; s < n_steps; s++) {
            for (int i = 0; i < n; i++) {
                const int b = b0 + i;
                const psf_real *xb = w->x + (size_t)b * D;
                psf_real *pb = prop + (size_t)i * D;
                lq[i] = 0; /* log q(x | x') - log q(x' | x) for scaled moves */
                if (!w->scale_moves)
                    for (int d = 0; d < D; d++) pb[d] = xb[d] + width * psf_rng_normal(&w->rng[b]);
                else
                    for (int e = 0; e < w->n_elec; e++) {
                        const double sf = width * psf__move_scale(&w->nuclei, xb + 3 * e);
                        double d2 = 0;
                        for (int k = 0; k < 3; k++) {
                            const double dk = sf * psf_rng_normal(&w->rng[b]);
                            pb[3 * e + k] = xb[3 * e + k] + dk;
                            d2 += dk * dk;
                        }
                        const double sr = width * psf__move_scale(&w->nuclei, pb + 3 * e);
                        lq[i] += -d2 / (2 * sr * sr) - 3 * log(sr) + d2 / (2 * sf * sf) + 3 * log(sf);
                    }
            }
            if (wf->logpsi_block) wf->logpsi_block(wf->ctx, wsp, n, prop, lp, sg);
            else lp[0] = wf->logpsi(wf->ctx, wsp, prop, &sg[0]);
            for (int i = 0; i < n; i++) {
                const int b = b0 + i;
                const double u = psf_rng_uniform(&w->rng[b]);
                /* accept with probability min(1, |psi'|^2 q(x|x') / (|psi|^2 q(x'|x))); psi = 0 is never accepted */
                if (sg[i] != 0 && (w->sign[b] == 0 || log(u) < 2.0 * (lp[i] - w->logpsi[b]) + lq[i])) {
                    memcpy(w->x + (size_t)b * D, prop + (size_t)i * D, sizeof(psf_real) * D);
                    w->logpsi[b] = lp[i];
                    w->sign[b] = sg[i];
                    acc++;
                }
            }
        }
    }
    w->n_accepted += acc;
    w->n_proposed += (long)B * n_steps;
    return n_steps > 0 ? (double)acc / ((double)B * n_steps) : 0.0;
}

void psf_mcmc_adapt(psf_walkers *w, double pmove) {
    if (pmove > 0.55) w->width *= 1.1;
    else if (pmove < 0.50) w->width /= 1.1;
    if (w->width > 2.0) w->width = 2.0;
    if (w->width < 1e-3) w->width = 1e-3;
}

/* ============================================================================================================
 *  [IMPL: STATISTICS] reblocking
 * ============================================================================================================ */

int psf_reblock(const double *x, int n, double *mean, double *err, int *block_size) {
    if (n < 2) return psf__fail(PSF_ERR_ARG, "psf_reblock: need at least 2 samples, got %d", n);
    double *y = (double *)psf__calloc((size_t)n, sizeof(double));
    if (!y) return psf__fail(PSF_ERR_NOMEM, "psf_reblock: out of memory");
    memcpy(y, x, sizeof(double) * (size_t)n);
    double mu = 0;
    for (int i = 0; i < n; i++) mu += x[i];
    mu /= n;
    int m = n, B = 1, best_B = -1, max_B = 1;
    double e0 = -1, best_e = 0, max_e = 0;
    while (m >= 2) {
        double v = 0, bm = 0;
        for (int i = 0; i < m; i++) bm += y[i];
        bm /= m;
        for (int i = 0; i < m; i++) v += (y[i] - bm) * (y[i] - bm);
        v /= (m - 1);
        const double e = sqrt(v / m);
        if (e0 < 0) e0 = e;
        if ((m >= 4 || B == 1) && e >= max_e) { max_e = e; max_B = B; }
        const double ratio = e0 > 0 ? e / e0 : 1.0;
        /* a blocking of 2 or 3 blocks meets the criterion by its own noise: at least 4 blocks */
        if (best_B < 0 && m >= 4 && (double)B * B * B > 2.0 * n * ratio * ratio * ratio * ratio) { best_B = B; best_e = e; }
        for (int i = 0; i < m / 2; i++) y[i] = 0.5 * (y[2 * i] + y[2 * i + 1]);
        m /= 2;
        B *= 2;
    }
    PSF_FREE(y);
    if (best_B < 0) { best_B = -max_B; best_e = max_e; } /* no plateau: the largest estimate, flagged */
    *mean = mu;
    *err = best_e;
    if (block_size) *block_size = best_B;
    return PSF_OK;
}

/* ============================================================================================================
 *  [IMPL: OPTIMIZERS] Adam (Kingma & Ba 2015) and KFAC (Martens & Grosse 2015)
 * ============================================================================================================ */

void psf_vmc_config_default(psf_vmc_config *c) {
    memset(c, 0, sizeof *c);
    c->batch = 256;
    c->mcmc_steps = 10;
    c->burn_in = 200;
    c->mcmc_width = 0.2;
    c->optimizer = PSF_OPT_KFAC;
    c->lr = 0; /* resolved by psf_vmc_init: KFAC 0.05 (FermiNet), Adam 3e-3 */
    c->lr_delay = 1e4;
    c->adam_b1 = 0.9; c->adam_b2 = 0.999; c->adam_eps = 1e-8;
    c->clip_scale = 5.0;
    c->kfac_decay = 0.95;
    c->kfac_damping = 1e-3;
    c->kfac_norm_constraint = 1e-3;
    c->kfac_ferminet_scale = 1;
    c->spring_mu = 0.99;
    c->spring_damping = 1e-3;
    c->spring_norm_constraint = 1e-2; /* vmcnet's 1e-3 stays at the HF level on carbon in 10 min (results.md) */
    c->seed = 1;
    c->threads = 0;
}

/* ---- The optimizer interface. An optimizer is one row of rules; the driver calls them in this order in every
 *      training step (docs/architecture.md, "adding an optimizer"):
 *        chunk_begin(st, c, ws)  before the walkers of reduction chunk c, on the thread that runs the chunk
 *        walker(st, c, b, g)     with walker b's g = grad_theta log|psi(x_b)| [P]          (per_walker only)
 *        chunk_end(st, c, ws)    after the chunk
 *        update(v, st, n, &eta)  once v->grad (the energy gradient, [P]) is complete: changes the parameters
 *      A per_walker optimizer gets every walker's gradient of log|psi| (seed 1) and the LINEAR observer of the
 *      workspace may be set in chunk_begin; otherwise the driver back-propagates the weights 2 (E~_b - <E~>)/B
 *      directly. save/load write and read the state in checkpoints (1 on success).                              */
typedef struct {
    const char *name;
    int per_walker;
    double default_lr;
    void *(*init)(const psf_vmc *v); /* NULL with the error set on failure */
    void (*chunk_begin)(void *st, int chunk, psf_workspace *ws);
    void (*walker)(void *st, int chunk, int b, const psf_real *g);
    void (*chunk_end)(void *st, int chunk, psf_workspace *ws);
    int (*update)(psf_vmc *v, void *st, int n_walkers, double *step_size);
    int (*save)(const void *st, FILE *f);
    int (*load)(void *st, FILE *f);
    void (*free)(void *st);
    /* The state update() carries from step to step, for rejecting a non-finite step: n[0] and n[1] reals at
     * a[0], a[1] (n = 0: unused) and a step counter (NULL: none). All zero is the initial state. */
    void (*state)(void *st, double *a[2], size_t n[2], long **counter);
    /* The bytes init() allocates for model m, configuration cfg, n_ws workspaces (threads) and n_chunks reduction chunks
     * (SIZE_MAX when they do not fit in size_t), and in *state_reals the n[0] + n[1] of state(); no allocation.
     * psf_vmc_memory adds them up; keep them in step with init(). */
    size_t (*bytes)(const psf_model *m, const psf_vmc_config *cfg, int n_ws, int n_chunks, size_t *state_reals);
    /* MPI: after this rank's chunks, copy what chunk_begin .. chunk_end collected for them to every rank with
     * psf__mpi_gather (per chunk or per walker), so that update() sees all chunks on every rank (NULL: nothing
     * beyond the energy gradient's chunks, which the driver gathers). Returns a status code. */
    int (*gather)(const psf_vmc *v, void *st);
} psf__optimizer_rules;

static int psf__mpi_gather(const psf_vmc *v, void *buf, size_t row_bytes, int by_walker);

static int psf__wr(FILE *f, const void *p, size_t sz, size_t n) { return fwrite(p, sz, n, f) == n; }
static int psf__rd(FILE *f, void *p, size_t sz, size_t n) { return fread(p, sz, n, f) == n; }
static void psf__chunk_nothing(void *st, int chunk, psf_workspace *ws) { (void)st; (void)chunk; (void)ws; }
static double psf__lr_at(const psf_vmc *v) { return v->step_scale * v->cfg.lr / (1.0 + (double)v->step / v->cfg.lr_delay); }
/* The norm constraint of the next step: the configured C times step_scale^2, so a step bounded by it shrinks by
 * step_scale like one that is not. */
static double psf__norm_bound(const psf_vmc *v, double C) { return C * v->step_scale * v->step_scale; }

/* ---- Adam (Kingma & Ba, ICLR 2015) on the energy gradient, lr_t = lr / (1 + t / delay) ------------------ */
typedef struct { size_t P; double *m, *v; } psf__adam; /* the moments in double whatever psf_real is */

static void psf__adam_free(void *st) {
    psf__adam *a = (psf__adam *)st;
    if (a) { PSF_FREE(a->m); PSF_FREE(a->v); PSF_FREE(a); }
}
static void *psf__adam_init(const psf_vmc *v) {
    psf__adam *a = (psf__adam *)psf__calloc(1, sizeof *a);
    if (!a) { psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for Adam"); return NULL; }
    a->P = v->model->n_params;
    a->m = (double *)psf__calloc(a->P, sizeof(double));
    a->v = (double *)psf__calloc(a->P, sizeof(double));
    if (!a->m || !a->v) { psf__adam_free(a); psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for Adam"); return NULL; }
    return a;
}
/* One Adam step t (1, 2, ...) with learning rate lr on theta [P] from the gradient g and the moments m, v. */
static void psf__adam_apply(const psf_vmc_config *c, double t, double lr, size_t P, const psf_real *g, double *m,
                            double *v, psf_real *theta) {
    const double bc1 = 1 - pow(c->adam_b1, t), bc2 = 1 - pow(c->adam_b2, t);
    for (size_t i = 0; i < P; i++) {
        m[i] = c->adam_b1 * m[i] + (1 - c->adam_b1) * g[i];
        v[i] = c->adam_b2 * v[i] + (1 - c->adam_b2) * g[i] * g[i];
        theta[i] -= lr * (m[i] / bc1) / (sqrt(v[i] / bc2) + c->adam_eps);
    }
}
static int psf__adam_update(psf_vmc *v, void *st, int n_walkers, double *step_size) {
    psf__adam *a = (psf__adam *)st;
    const double lr = psf__lr_at(v);
    (void)n_walkers;
    psf__adam_apply(&v->cfg, (double)(v->step + 1), lr, a->P, v->grad, a->m, a->v, v->model->params);
    *step_size = lr;
    return PSF_OK;
}
static int psf__adam_save(const void *st, FILE *f) {
    const psf__adam *a = (const psf__adam *)st;
    return psf__wr(f, a->m, sizeof(double), a->P) && psf__wr(f, a->v, sizeof(double), a->P);
}
static int psf__adam_load(void *st, FILE *f) {
    psf__adam *a = (psf__adam *)st;
    return psf__rd(f, a->m, sizeof(double), a->P) && psf__rd(f, a->v, sizeof(double), a->P);
}
static void psf__adam_state(void *st, double *a[2], size_t n[2], long **counter) {
    psf__adam *s = (psf__adam *)st;
    a[0] = s->m; a[1] = s->v; n[0] = n[1] = s->P; *counter = NULL; /* the step count is v->step */
}
static size_t psf__adam_bytes(const psf_model *m, const psf_vmc_config *cfg, int n_ws, int n_chunks, size_t *state_reals) {
    const int B = cfg->batch;
    (void)B; (void)n_ws; (void)n_chunks;
    *state_reals = psf__mul(2, m->n_params);
    return psf__add(psf__alloc_bytes(1, sizeof(psf__adam)), psf__mul(2, psf__alloc_bytes(m->n_params, sizeof(double))));
}
static const psf__optimizer_rules psf__adam_rules = {
    "adam", 0, 3e-3, psf__adam_init, psf__chunk_nothing, NULL, psf__chunk_nothing, psf__adam_update,
    psf__adam_save, psf__adam_load, psf__adam_free, psf__adam_state, psf__adam_bytes, NULL};


/* ---- KFAC (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature",
 *      ICML 2015), on the Fisher of log|psi| as used for FermiNet / Psiformer (Pfau et al. 2020, §"Optimization").
 *
 *  Every LINEAR node group is a dense block (weights W [a x b] and, if present, the bias as an extra row, so the
 *  block is the (a+1) x b matrix of parameters as stored). Its Fisher is approximated by A (x) S with
 *      A = 1/(B T) sum_{walkers, tokens} abar abar^T      (abar = [a; 1], the layer input per electron token)
 *      S = 1/B     sum_{walkers, tokens} e e^T            (e = d log|psi| / d y, the output sensitivity)
 *  i.e. KFAC-expand for a layer shared over T electron tokens (Eschenhagen et al., NeurIPS 2023). Every other
 *  parameter (LayerNorm scale/offset, envelope pi/sigma, Jastrow) has a diagonal block E[g_p^2].
 *  Factors are exponential moving averages (decay 0.95). Factored Tikhonov damping (Martens & Grosse §6.3):
 *      (A + pi sqrt(lambda) I) (x) (S + sqrt(lambda)/pi I),  pi = sqrt( (tr A / dim A) / (tr S / dim S) ),
 *  so the preconditioned gradient of a block G is  Delta = (A + pi g I)^{-1} G (S + g/pi I)^{-1}, g = sqrt(lambda),
 *  solved by Cholesky factorisation; diagonal blocks use g_p / (F_pp + lambda). The step is theta -= eta Delta
 *  with eta = lr_t, reduced so that eta^2 <Delta, grad> <= norm_constraint (the KFAC norm constraint of
 *  Ba, Grosse, Martens, ICLR 2017, as in FermiNet).                                                          */
typedef struct psf__kfac_dense {
    int node, group, r0, r1, rows, cols; /* A is rows x rows (rows = a + has_bias), S is cols x cols */
    size_t poff, a_off, s_off;            /* parameter block; factor offsets in a statistics vector   */
    int in_cols;                          /* a, the layer's input width                               */
} psf__kfac_dense;

typedef struct psf__kfac_collector psf__kfac_collector;
typedef struct psf_kfac {
    int n_dense;
    psf__kfac_dense *dense;
    int node_dense[PSF_MAX_NODES]; /* index of the first dense block of a LINEAR node, -1 otherwise */
    unsigned char *is_dense;       /* [P]                                                          */
    size_t stat_reals, diag_off;   /* factors of all dense blocks, then P diagonal entries         */
    double *ema;                   /* [stat_reals]                                                 */
    double *chunk_stats;           /* [n_chunks * stat_reals]                                      */
    psf__kfac_collector *col;      /* [n_chunks] the LINEAR observer's context per chunk            */
    double *delta;                 /* [P] preconditioned gradient                                  */
    double *work;                  /* solver scratch, work_stride reals per thread                  */
    size_t work_stride;
    long n_updates;
    double last_eta, last_q;       /* step size used and <Delta, grad> of the last update          */
} psf_kfac;

struct psf__kfac_collector { const psf_kfac *k; double *stats; };

/* Cholesky factorisation A = L L^T of a symmetric positive definite n x n matrix, row-major, in place: the lower
 * triangle (diagonal included) becomes L; the strict upper triangle is scratch afterwards. Only the lower triangle
 * of A is read. With PSF_USE_CBLAS (and without PSF_NO_LAPACK), n >= PSF__CHOL_NB goes to LAPACK's dpotrf
 * (OpenBLAS contains LAPACK; the row-major lower triangle is the column-major upper one); otherwise the blocked
 * right-looking factorisation below (Golub & Van Loan, Matrix Computations, 4th ed., Alg. 4.2.4): per panel of
 * PSF__CHOL_NB columns, the unblocked factor of its diagonal block, the triangular solve of the rows below, then
 * the trailing lower triangle minus the panel's outer product, tile by tile with psf__gemm. Every tile is computed
 * by one thread with the same arithmetic, so the bits do not depend on the thread count. Returns 0, or 1 if the
 * matrix is not positive definite (a pivot <= 0 or NaN). */
enum { PSF__CHOL_NB = 64 };
static int psf__cholesky_unblocked(int n, double *a, int lda) {
    for (int j = 0; j < n; j++) {
        double d = a[(size_t)j * lda + j];
        for (int k = 0; k < j; k++) d -= a[(size_t)j * lda + k] * a[(size_t)j * lda + k];
        if (!(d > 0)) return 1;
        d = sqrt(d);
        a[(size_t)j * lda + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = a[(size_t)i * lda + j];
            for (int k = 0; k < j; k++) s -= a[(size_t)i * lda + k] * a[(size_t)j * lda + k];
            a[(size_t)i * lda + j] = s / d;
        }
    }
    return 0;
}
#if defined(PSF_USE_CBLAS) && !defined(PSF_NO_LAPACK)
#define PSF__LAPACK 1
#ifdef __cplusplus
extern "C"
#endif
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
#endif
static int psf__cholesky(int n, double *a) {
    const int nb = PSF__CHOL_NB;
    if (n <= nb) return psf__cholesky_unblocked(n, a, n);
#ifdef PSF__LAPACK
    int info = 0;
    dpotrf_("U", &n, a, &n, &info);
    if (info != 0) return 1;
    for (int j = 0; j < n; j++) /* LAPACK lets a NaN pivot through */
        if (!(a[(size_t)j * n + j] > 0)) return 1;
    return 0;
#else
    for (int k0 = 0; k0 < n; k0 += nb) {
        const int kb = n - k0 < nb ? n - k0 : nb, r0 = k0 + kb, m = n - r0;
        double *akk = a + (size_t)k0 * n + k0;
        if (psf__cholesky_unblocked(kb, akk, n)) return 1;
        if (m == 0) break;
        double lt[PSF__CHOL_NB * PSF__CHOL_NB]; /* L_kk^T, so that the row solves below run along rows */
        for (int i = 0; i < kb; i++)
            for (int j = 0; j <= i; j++) lt[j * kb + i] = akk[(size_t)i * n + j];
        const int nt = (m + nb - 1) / nb; /* tiles of nb rows below the panel */
PSF__OMP(parallel for schedule(static))
        for (int t = 0; t < nt; t++) { /* panel rows: x L_kk^T = p, one row at a time (axpy form) */
            const int i1 = r0 + (t + 1) * nb < n ? r0 + (t + 1) * nb : n;
            for (int i = r0 + t * nb; i < i1; i++) {
                double *p = a + (size_t)i * n + k0;
                for (int j = 0; j < kb; j++) {
                    const double x = p[j] / lt[j * kb + j];
                    p[j] = x;
                    for (int q = j + 1; q < kb; q++) p[q] -= x * lt[j * kb + q];
                }
            }
        }
        const int ntt = nt * (nt + 1) / 2; /* trailing tiles (ti, tj), tj <= ti: A_ij -= P_i P_j^T */
PSF__OMP(parallel for schedule(dynamic, 1))
        for (int t = 0; t < ntt; t++) {
            int ti = 0;
            while ((ti + 1) * (ti + 2) / 2 <= t) ti++;
            const int tj = t - ti * (ti + 1) / 2, i0 = r0 + ti * nb, j0 = r0 + tj * nb;
            const int mi = n - i0 < nb ? n - i0 : nb, mj = n - j0 < nb ? n - j0 : nb;
            psf__dgemm(0, 1, mi, mj, kb, -1.0, a + (size_t)i0 * n + k0, n, a + (size_t)j0 * n + k0, n, 1.0,
                      a + (size_t)i0 * n + j0, n);
        }
    }
    return 0;
#endif
}

/* Solves L L^T x = b in place (b has stride `stride` between its n entries). */
static void psf__chol_solve(int n, const double *L, double *b, size_t stride) {
    for (int i = 0; i < n; i++) {
        double s = b[i * stride];
        for (int k = 0; k < i; k++) s -= L[(size_t)i * n + k] * b[k * stride];
        b[i * stride] = s / L[(size_t)i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = b[i * stride];
        for (int k = i + 1; k < n; k++) s -= L[(size_t)k * n + i] * b[k * stride];
        b[i * stride] = s / L[(size_t)i * n + i];
    }
}

/* Delta = (A + pi g I)^{-1} G (S + g/pi I)^{-1} for one dense block, G and Delta rows x cols (row-major).
 * work: rows^2 + cols^2 reals. Returns the pi used, or -1 if a damped factor is not positive definite. */
static double psf__kfac_precondition_dense(int rows, int cols, const double *A, const double *S, double lambda,
                                           const psf_real *G, double *Delta, double *work) {
    double trA = 0, trS = 0;
    for (int i = 0; i < rows; i++) trA += A[(size_t)i * rows + i];
    for (int i = 0; i < cols; i++) trS += S[(size_t)i * cols + i];
    double pi = sqrt((trA / rows) / (trS / cols));
    if (!isfinite(pi) || !(pi > 0)) pi = 1.0;
    const double g = sqrt(lambda);
    double *LA = work, *LS = work + (size_t)rows * rows;
    memcpy(LA, A, sizeof(double) * (size_t)rows * rows);
    memcpy(LS, S, sizeof(double) * (size_t)cols * cols);
    for (int i = 0; i < rows; i++) LA[(size_t)i * rows + i] += pi * g;
    for (int i = 0; i < cols; i++) LS[(size_t)i * cols + i] += g / pi;
    if (psf__cholesky(rows, LA) || psf__cholesky(cols, LS)) return -1;
    for (size_t i = 0; i < (size_t)rows * cols; i++) Delta[i] = G[i];
    for (int j = 0; j < cols; j++) psf__chol_solve(rows, LA, Delta + j, (size_t)cols); /* columns: A^-1 G */
    for (int i = 0; i < rows; i++) psf__chol_solve(cols, LS, Delta + (size_t)i * cols, 1); /* rows: . S^-1 */
    return pi;
}

static void psf__kfac_free(void *st) {
    psf_kfac *k = (psf_kfac *)st;
    if (!k) return;
    PSF_FREE(k->dense); PSF_FREE(k->is_dense); PSF_FREE(k->ema); PSF_FREE(k->chunk_stats);
    PSF_FREE(k->col); PSF_FREE(k->delta); PSF_FREE(k->work);
    PSF_FREE(k);
}

/* KFAC's layout without building it: the reals of all Kronecker factors (A and S of every dense block) and the
 * largest A + S of one block (the per-thread inversion work). Mirrors the loop of psf__kfac_init. */
static void psf__kfac_layout(const psf_model *m, size_t *factor_reals, size_t *max_block) {
    size_t off = 0, maxw = 0;
    for (int n = 0; n < m->n_nodes; n++) {
        const psf_node *nd = &m->nodes[n];
        if (nd->op != PSF_OP_LINEAR) continue;
        const size_t rows = (size_t)m->nodes[nd->in0].cols + (nd->ib ? 1 : 0), cols = (size_t)nd->cols;
        const size_t w = psf__add(psf__mul(rows, rows), psf__mul(cols, cols));
        off = psf__add(off, psf__mul((size_t)nd->ic, w));
        if (w > maxw) maxw = w;
    }
    *factor_reals = off;
    *max_block = maxw;
}
static size_t psf__kfac_bytes(const psf_model *m, const psf_vmc_config *cfg, int n_ws, int n_chunks, size_t *state_reals) {
    const int B = cfg->batch;
    size_t factors, maxw;
    (void)B;
    psf__kfac_layout(m, &factors, &maxw);
    const size_t P = m->n_params, stat = psf__add(factors, P);
    *state_reals = stat;
    size_t b = psf__alloc_bytes(1, sizeof(psf_kfac));
    b = psf__add(b, psf__alloc_bytes(2 * (size_t)m->n_nodes, sizeof(psf__kfac_dense)));
    b = psf__add(b, psf__alloc_bytes(P, 1));
    b = psf__add(b, psf__alloc_bytes(stat, sizeof(double)));
    b = psf__add(b, psf__alloc_bytes(psf__mul(stat, (size_t)n_chunks), sizeof(double)));
    b = psf__add(b, psf__alloc_bytes((size_t)n_chunks, sizeof(psf__kfac_collector)));
    b = psf__add(b, psf__alloc_bytes(P, sizeof(double)));
    return psf__add(b, psf__alloc_bytes(psf__mul(psf__add(maxw, 1), (size_t)n_ws), sizeof(double)));
}

static void *psf__kfac_init(const psf_vmc *v) {
    const psf_model *m = v->model;
    const int n_chunks = v->n_chunks, n_threads = v->n_ws;
    psf_kfac *k = (psf_kfac *)psf__calloc(1, sizeof(psf_kfac));
    if (!k) { psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for KFAC"); return NULL; }
    const size_t P = m->n_params;
    k->dense = (psf__kfac_dense *)psf__calloc(2 * (size_t)m->n_nodes, sizeof(psf__kfac_dense));
    k->is_dense = (unsigned char *)psf__calloc(P, 1);
    if (!k->dense || !k->is_dense) { psf__kfac_free(k); psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for KFAC"); return NULL; }
    size_t off = 0, maxw = 0;
    for (int n = 0; n < m->n_nodes; n++) {
        const psf_node *nd = &m->nodes[n];
        k->node_dense[n] = -1;
        if (nd->op != PSF_OP_LINEAR) continue;
        k->node_dense[n] = k->n_dense;
        const int a = m->nodes[nd->in0].cols;
        for (int g = 0; g < nd->ic; g++) {
            psf__kfac_dense *d = &k->dense[k->n_dense++];
            d->node = n; d->group = g;
            psf__linear_groups(nd, g, &d->r0, &d->r1, &d->poff, a);
            d->rows = a + (nd->ib ? 1 : 0);
            d->in_cols = a;
            d->cols = nd->cols;
            d->a_off = off; off = psf__add(off, psf__mul((size_t)d->rows, (size_t)d->rows));
            d->s_off = off; off = psf__add(off, psf__mul((size_t)d->cols, (size_t)d->cols));
            memset(k->is_dense + d->poff, 1, (size_t)d->rows * d->cols);
            const size_t w = psf__add(psf__mul((size_t)d->rows, (size_t)d->rows), psf__mul((size_t)d->cols, (size_t)d->cols));
            if (w > maxw) maxw = w;
        }
    }
    size_t lay_off, lay_maxw;
    psf__kfac_layout(m, &lay_off, &lay_maxw);
    PSF_ASSERT(lay_off == off && lay_maxw == maxw); /* psf_vmc_memory counts with the layout */
    k->diag_off = off;
    k->stat_reals = psf__add(off, P);
    k->ema = (double *)psf__calloc(k->stat_reals, sizeof(double));
    k->chunk_stats = (double *)psf__calloc(psf__mul(k->stat_reals, (size_t)n_chunks), sizeof(double));
    k->col = (psf__kfac_collector *)psf__calloc((size_t)n_chunks, sizeof(psf__kfac_collector));
    k->delta = (double *)psf__calloc(P, sizeof(double));
    k->work_stride = psf__add(maxw, 1);
    k->work = (double *)psf__calloc(psf__mul(k->work_stride, (size_t)n_threads), sizeof(double));
    if (!k->ema || !k->chunk_stats || !k->col || !k->delta || !k->work) {
        psf__kfac_free(k);
        psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for KFAC");
        return NULL;
    }
    for (int c = 0; c < n_chunks; c++) { k->col[c].k = k; k->col[c].stats = k->chunk_stats + (size_t)c * k->stat_reals; }
    return k;
}

/* A [n x n, row stride lda] += X^T X for the T x n tape values X: one product when psf_real is double, the sums
 * in double over the float values otherwise. */
static void psf__syrk_acc(int n, int T, const psf_real *X, double *A, int lda) {
#if PSF__REAL_FLOAT
    for (int t = 0; t < T; t++) {
        const psf_real *x = X + (size_t)t * n;
        for (int i = 0; i < n; i++) {
            const double xi = x[i];
            for (int j = 0; j < n; j++) A[(size_t)i * lda + j] += xi * x[j];
        }
    }
#else
    psf__dgemm(1, 0, n, n, T, 1.0, X, n, X, n, 1.0, A, lda);
#endif
}

/* The LINEAR observer during a KFAC statistics pass (seed 1): adds abar abar^T and e e^T of this walker's tokens
 * to the chunk's statistics. */
static void psf__kfac_observe(void *ctx, int n, const psf_node *nd, const psf_real *X, const psf_real *dY) {
    psf__kfac_collector *col = (psf__kfac_collector *)ctx;
    const psf_kfac *k = col->k;
    const int b = nd->cols;
    for (int g = 0; g < nd->ic; g++) {
        const psf__kfac_dense *d = &k->dense[k->node_dense[n] + g];
        const int a = d->in_cols;
        const int T = d->r1 - d->r0;
        if (T <= 0) continue;
        double *A = col->stats + d->a_off, *S = col->stats + d->s_off;
        const psf_real *Xg = X + (size_t)d->r0 * a, *Eg = dY + (size_t)d->r0 * b;
        psf__syrk_acc(a, T, Xg, A, d->rows);
        if (d->rows > a) { /* bias: abar = [a; 1] */
            for (int j = 0; j < a; j++) {
                double s = 0;
                for (int t = 0; t < T; t++) s += Xg[(size_t)t * a + j];
                A[(size_t)a * d->rows + j] += s;
                A[(size_t)j * d->rows + a] += s;
            }
            A[(size_t)a * d->rows + a] += T;
        }
        psf__syrk_acc(b, T, Eg, S, b);
    }
}

/* The chunk's statistics start at zero; the LINEAR observer collects the Kronecker factors, walker() the
 * diagonal blocks E[g_p^2]. */
static void psf__kfac_chunk_begin(void *st, int chunk, psf_workspace *ws) {
    psf_kfac *k = (psf_kfac *)st;
    memset(k->col[chunk].stats, 0, sizeof(double) * k->stat_reals);
    ws->observe = psf__kfac_observe;
    ws->observe_ctx = &k->col[chunk];
}
static void psf__kfac_walker(void *st, int chunk, int b, const psf_real *g) {
    psf_kfac *k = (psf_kfac *)st;
    double *diag = k->col[chunk].stats + k->diag_off;
    const size_t P = k->stat_reals - k->diag_off;
    (void)b;
    for (size_t p = 0; p < P; p++) diag[p] += g[p] * g[p];
}
static void psf__kfac_chunk_end(void *st, int chunk, psf_workspace *ws) {
    (void)st; (void)chunk;
    ws->observe = NULL;
    ws->observe_ctx = NULL;
}

/* From the batch statistics (sums over B walkers) to the running factors, then Delta and the step. */
static int psf__kfac_update(psf_vmc *v, void *st, int n_walkers, double *step_size) {
    psf_kfac *k = (psf_kfac *)st;
    const psf_model *m = v->model;
    const psf_vmc_config *c = &v->cfg;
    const size_t P = m->n_params, S = k->stat_reals;
    /* reduce chunks in a fixed order */
    double *batch = k->chunk_stats; /* chunk 0 accumulates the others, each entry in chunk order */
    const int nch = v->n_chunks;
PSF__OMP(parallel for schedule(static))
    for (long i = 0; i < (long)S; i++) {
        double acc = batch[i];
        for (int ch = 1; ch < nch; ch++) acc += k->chunk_stats[(size_t)ch * S + (size_t)i];
        batch[i] = acc;
    }
    /* FermiNet's scaling: log|psi| registered as a normal predictive distribution of variance 1/2 makes the Fisher
     * 2 E[g g^T], and its gradient E[(E_L - <E_L>) g] is half of ours (ferminet/loss.py, kfac_jax) */
    const double fs = c->kfac_ferminet_scale ? 2.0 : 1.0, gs = c->kfac_ferminet_scale ? 0.5 : 1.0;
    const double decay = k->n_updates == 0 ? 0.0 : (c->kfac_decay < (double)k->n_updates / (k->n_updates + 1.0)
                                                     ? c->kfac_decay : (double)k->n_updates / (k->n_updates + 1.0));
    for (int di = 0; di < k->n_dense; di++) {
        const psf__kfac_dense *d = &k->dense[di];
        const double T = (double)(d->r1 - d->r0) > 0 ? (double)(d->r1 - d->r0) : 1.0;
        const double sa = 1.0 / ((double)n_walkers * T), ss = fs / (double)n_walkers;
        for (size_t i = 0; i < (size_t)d->rows * d->rows; i++)
            k->ema[d->a_off + i] = decay * k->ema[d->a_off + i] + (1 - decay) * sa * batch[d->a_off + i];
        for (size_t i = 0; i < (size_t)d->cols * d->cols; i++)
            k->ema[d->s_off + i] = decay * k->ema[d->s_off + i] + (1 - decay) * ss * batch[d->s_off + i];
    }
    for (size_t p = 0; p < P; p++)
        if (!k->is_dense[p]) k->ema[k->diag_off + p] = decay * k->ema[k->diag_off + p] + (1 - decay) * fs * batch[k->diag_off + p] / n_walkers;
    k->n_updates++;
    /* precondition: blocks are independent (thread t uses its own slice of the scratch) */
PSF__OMP(parallel for schedule(dynamic, 1))
    for (int di = 0; di < k->n_dense; di++) {
        const psf__kfac_dense *d = &k->dense[di];
        if (d->r1 <= d->r0) { memset(k->delta + d->poff, 0, sizeof(double) * (size_t)d->rows * d->cols); continue; }
        double lam = c->kfac_damping, *work = k->work + (size_t)psf__thread_id() * k->work_stride;
        while (psf__kfac_precondition_dense(d->rows, d->cols, k->ema + d->a_off, k->ema + d->s_off, lam,
                                            v->grad + d->poff, k->delta + d->poff, work) < 0) {
            lam *= 10; /* a factor lost positive definiteness to rounding: damp harder for this block */
            if (!(lam < 1e300)) { /* no damping helps: the factors are not finite; the step will be rejected */
                for (size_t i = 0; i < (size_t)d->rows * d->cols; i++) k->delta[d->poff + i] = NAN;
                break;
            }
        }
    }
    for (size_t p = 0; p < P; p++)
        if (!k->is_dense[p]) k->delta[p] = v->grad[p] / (k->ema[k->diag_off + p] + c->kfac_damping);
    /* norm constraint and step */
    if (gs != 1.0) for (size_t p = 0; p < P; p++) k->delta[p] *= gs;
    double q = 0;
    for (size_t p = 0; p < P; p++) q += k->delta[p] * v->grad[p];
    q *= gs;
    double eta = psf__lr_at(v);
    const double bound = psf__norm_bound(v, c->kfac_norm_constraint);
    if (q > 0 && eta * eta * q > bound) eta = sqrt(bound / q);
    k->last_eta = eta;
    k->last_q = q;
    for (size_t p = 0; p < P; p++) m->params[p] -= eta * k->delta[p];
    *step_size = eta;
    return PSF_OK;
}
static int psf__kfac_save(const void *st, FILE *f) {
    const psf_kfac *k = (const psf_kfac *)st;
    const int64_t nu = k->n_updates, ns = (int64_t)k->stat_reals;
    return psf__wr(f, &nu, 8, 1) && psf__wr(f, &ns, 8, 1) && psf__wr(f, k->ema, sizeof(double), k->stat_reals);
}
static int psf__kfac_load(void *st, FILE *f) {
    psf_kfac *k = (psf_kfac *)st;
    int64_t nu, ns;
    const int ok = psf__rd(f, &nu, 8, 1) && psf__rd(f, &ns, 8, 1) && ns == (int64_t)k->stat_reals &&
                   psf__rd(f, k->ema, sizeof(double), k->stat_reals);
    if (ok) k->n_updates = nu;
    return ok;
}
static void psf__kfac_state(void *st, double *a[2], size_t n[2], long **counter) {
    psf_kfac *k = (psf_kfac *)st;
    a[0] = k->ema; n[0] = k->stat_reals; a[1] = NULL; n[1] = 0; *counter = &k->n_updates;
}
static int psf__kfac_gather(const psf_vmc *v, void *st) {
    psf_kfac *k = (psf_kfac *)st;
    return psf__mpi_gather(v, k->chunk_stats, sizeof(double) * k->stat_reals, 0);
}
static const psf__optimizer_rules psf__kfac_rules = {
    "kfac", 1, 0.05, psf__kfac_init, psf__kfac_chunk_begin, psf__kfac_walker, psf__kfac_chunk_end,
    psf__kfac_update, psf__kfac_save, psf__kfac_load, psf__kfac_free, psf__kfac_state, psf__kfac_bytes, psf__kfac_gather};

/* ---- SPRING (Goldshlager, Abrahamsen, Lin, "A Kaczmarz-inspired approach to accelerate the optimization of
 *      neural network wavefunctions", J. Comput. Phys. 516, 113351 (2024), arXiv:2401.10190), as in its
 *      reference code (vmcnet, updates/spring.py). With n walkers of finite E_L,
 *          O_b  = (grad_theta log|psi(x_b)| - mean_b) / sqrt(n)        (the B x P matrix Ō; rows of other walkers 0)
 *          e_b  = (E~_b - <E~>) / sqrt(n)                               (ε, E~ the clipped local energy)
 *          T    = Ō Ō^T + (1/B) 1 1^T + lambda I                        (B x B; the 1 1^T term only lifts the zero
 *                                                                         eigenvalue that centring forces)
 *          phi  = Ō^T T^{-1} (e - mu Ō phi_prev) + mu phi_prev           (the minimiser of |Ō phi - e|^2 +
 *                                                                         lambda |phi - mu phi_prev|^2)
 *          theta -= s phi,  s = lr_t min(1, sqrt(C / |lr_t phi|^2))      (norm constraint on the step itself)
 *      and the raw phi (before lr and constraint) is kept as phi_prev. With mu = 0 this is the damped
 *      stochastic-reconfiguration step (Ō^T Ō + lambda I)^{-1} Ō^T e by the Woodbury identity; phi approximates
 *      (S + lambda)^{-1} grad E / 2 with S = Ō^T Ō. Ō has one row per walker. The kernel Ō Ō^T is computed on or
 *      above the diagonal (by stripes of rows, one per thread, for the float32 kernel on one rank; otherwise by
 *      the tiles of a fixed 4 x 4 grid) and mirrored, and the two matrix-vector products are split into fixed
 *      ranges of parameters: the bits do not depend on the thread count or the split, because each entry is
 *      summed in the same order whoever computes it. With cfg.spring_kernel_fp64 = 1, Ō is formed in double in
 *      place of the per-walker gradients. By default Ō is held in float32: the per-walker gradients are rounded to
 *      float as they are handed over, centred and scaled in double and rounded again into the panels that the
 *      kernel, Ō phi_prev and Ō^T zeta all read (each summed in double, the kernel in blocks of 128 terms summed in
 *      float: psf__gram_f32, twice the speed of the double product, every entry within 130 u32 sum_k |Ō_ik Ō_jk|,
 *      u32 = 2^-24, of the double product of the same float inputs). Ō in float moves half the bytes of the
 *      double rows through memory; each entry Ō_bp is within u32 (2 max_b |g_bp| / sqrt(n) + |Ō_bp|) (to first
 *      order) of the double one.
 *      When T is not positive definite to working precision (more walkers than parameters, gradients that blew
 *      up, lambda below the float kernel's rounding), lambda is raised tenfold, at most 8 times, before the step
 *      fails. The solve and phi stay in double. Memory: 2 B P floats (the rows, the panels), or B P doubles with
 *      the fp64 kernel.  */
typedef struct {
    int B;
    size_t P;
    double *G;           /* [B x P] per-walker grad log|psi| as the driver hands them over; then Ō (fp64 kernel) */
    float *Gf;             /* [B x P] the same rows rounded to float (float32 kernel; G is then NULL)          */
    double *z;             /* [PSF__PANELS(B) PSF__GNR] zeta padded with zeros (float32 kernel)               */
    unsigned char *valid;  /* [B] walkers with a finite local energy this step                         */
    double *phi, *phi_prev; /* [P]                                                                   */
    double *T, *r, *u;     /* [B x B] kernel then its Cholesky factor; [B] right-hand side; [B] scratch  */
    double *T0;            /* [B x B] the kernel before the damping (kept for a raised damping)          */
    double lambda_used;    /* the damping of the last direction (cfg.spring_damping unless raised)       */
    long n_raised;         /* directions whose damping had to be raised (not checkpointed)              */
    float *Of;             /* Ō in float32 for the kernel, in panels of PSF__GNR rows (psf__gram_f32; NULL: fp64) */
    long n_steps;
    int rank, n_ranks;     /* MPI: the kernel's upper tiles u = 0..9 are computed by rank u mod n_ranks       */
    const void *comm;      /* cfg.mpi_comm                                                                */
} psf__spring;

static void psf__spring_free(void *st) {
    psf__spring *s = (psf__spring *)st;
    if (!s) return;
    PSF_FREE(s->G); PSF_FREE(s->Gf); PSF_FREE(s->z); PSF_FREE(s->valid); PSF_FREE(s->phi); PSF_FREE(s->phi_prev);
    PSF_FREE(s->T); PSF_FREE(s->T0); PSF_FREE(s->r); PSF_FREE(s->u); PSF_FREE(s->Of);
    PSF_FREE(s);
}
static void *psf__spring_init(const psf_vmc *v) {
    const int B = v->cfg.batch;
    const size_t P = v->model->n_params;
    if (!(v->cfg.spring_mu >= 0 && v->cfg.spring_mu < 1) || !(v->cfg.spring_damping > 0) || !(v->cfg.spring_norm_constraint > 0)) {
        psf__fail(PSF_ERR_ARG, "psf_vmc_init: SPRING needs 0 <= mu < 1, damping > 0, norm_constraint > 0");
        return NULL;
    }
    if ((double)P * B > 2e9) {
        psf__fail(PSF_ERR_ARG, "psf_vmc_init: SPRING stores the %d x %zu per-walker gradients (%.1f GB): too large",
                  B, P, 8e-9 * (double)P * B);
        return NULL;
    }
    psf__spring *s = (psf__spring *)psf__calloc(1, sizeof *s);
    if (!s) { psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for SPRING"); return NULL; }
    s->B = B; s->P = P;
    s->rank = v->rank; s->n_ranks = v->n_ranks; s->comm = v->cfg.mpi_comm;
    if (v->cfg.spring_kernel_fp64) s->G = (double *)psf__calloc(psf__mul(P, (size_t)B), sizeof(double));
    else {
        s->Gf = (float *)psf__calloc(psf__mul(P, (size_t)B), sizeof(float));
        s->z = (double *)psf__calloc((size_t)PSF__PANELS(B) * PSF__GNR, sizeof(double));
    }
    s->valid = (unsigned char *)psf__calloc((size_t)B, 1);
    s->phi = (double *)psf__calloc(P, sizeof(double));
    s->phi_prev = (double *)psf__calloc(P, sizeof(double));
    s->T = (double *)psf__calloc(psf__mul((size_t)B, (size_t)B), sizeof(double));
    s->T0 = (double *)psf__calloc(psf__mul((size_t)B, (size_t)B), sizeof(double));
    s->r = (double *)psf__calloc((size_t)B, sizeof(double));
    s->u = (double *)psf__calloc((size_t)B, sizeof(double));
    if (!v->cfg.spring_kernel_fp64)
        s->Of = (float *)psf__calloc(psf__mul(P, (size_t)PSF__PANELS(B) * PSF__GNR), sizeof(float));
    if (!s->valid || !s->phi || !s->phi_prev || !s->T || !s->T0 || !s->r || !s->u ||
        (v->cfg.spring_kernel_fp64 ? !s->G : (!s->Gf || !s->z || !s->Of))) {
        psf__spring_free(s);
        psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory for SPRING (%.0f MB of per-walker gradients)",
                  8e-6 * (double)P * B);
        return NULL;
    }
    return s;
}
static void psf__spring_walker(void *st, int chunk, int b, const psf_real *g) {
    psf__spring *s = (psf__spring *)st;
    (void)chunk;
    if (s->G) {
        double *d = s->G + (size_t)b * s->P;
        for (size_t p = 0; p < s->P; p++) d[p] = g[p];
    } else {
        float *f = s->Gf + (size_t)b * s->P;
        for (size_t p = 0; p < s->P; p++) f[p] = (float)g[p];
    }
    s->valid[b] = 1;
}

/* Fixed row ranges for the matrix-vector products over the B x P rows (the same split for any thread count). */
enum { PSF__SPRING_SLABS = 16, PSF__SPRING_RAISES = 8 };

/* Rows [*i0, *i1) of tile row bi of the NB x NB grid: B bi / NB .. B (bi + 1) / NB, or whole panels of the float32
 * copy (the bits of an entry do not depend on the tiling). */
static void psf__spring_tile_rows(const psf__spring *s, int bi, int NB, int *i0, int *i1) {
    const int B = s->B, np = PSF__PANELS(B);
    if (s->Of) { *i0 = PSF__GNR * (np * bi / NB); *i1 = PSF__GNR * (np * (bi + 1) / NB); if (*i1 > B) *i1 = B; }
    else { *i0 = B * bi / NB; *i1 = B * (bi + 1) / NB; }
}
/* MPI: upper tile (bi, bj) of the NB x NB grid, number u in row order, is computed by rank u mod n_ranks. */
static int psf__spring_tile_owner(const psf__spring *s, int bi, int bj, int NB) {
    const int u = bi * NB - bi * (bi - 1) / 2 + (bj - bi);
    return u % s->n_ranks;
}
/* MPI: each upper tile of T from the rank that computed it to all (packed through T0, free at this point).
 * Returns 0, or 1 with the error set. */
static int psf__spring_share_tiles(psf__spring *s, int NB) {
#ifdef PSF_USE_MPI
    const int B = s->B;
    for (int bi = 0; bi < NB; bi++)
        for (int bj = bi; bj < NB; bj++) {
            int i0, i1, j0, j1;
            psf__spring_tile_rows(s, bi, NB, &i0, &i1);
            psf__spring_tile_rows(s, bj, NB, &j0, &j1);
            const int owner = psf__spring_tile_owner(s, bi, bj, NB), w = j1 - j0, n = (i1 - i0) * w;
            if (n <= 0) continue;
            if (owner == s->rank)
                for (int i = i0; i < i1; i++) memcpy(s->T0 + (size_t)(i - i0) * w, s->T + (size_t)i * B + j0, sizeof(double) * w);
            const int rc = MPI_Bcast(s->T0, n, MPI_DOUBLE, owner, *(const MPI_Comm *)s->comm);
            if (rc != MPI_SUCCESS) { psf__fail(PSF_ERR_MPI, "SPRING: MPI_Bcast of a kernel tile failed (MPI error %d)", rc); return 1; }
            if (owner != s->rank)
                for (int i = i0; i < i1; i++) memcpy(s->T + (size_t)i * B + j0, s->T0 + (size_t)(i - i0) * w, sizeof(double) * w);
        }
#else
    (void)s; (void)NB;
#endif
    return 0;
}

/* The first panel of stripe t of S over np panels: the first q whose panel rows 0..q-1 hold at least t / S of the
 * np (np + 1) / 2 panel pairs on and above the diagonal (row q holds np - q of them); np for t = S. */
static int psf__stripe_start(int np, int S, int t) {
    const long pairs = (long)np * (np + 1) / 2;
    int q = 0;
    while (q < np && ((long)q * np - (long)q * (q - 1) / 2) * S < pairs * t) q++;
    return q;
}

/* The upper triangle of T = Ō Ō^T (B x B doubles, leading dimension B; entries below the diagonal are not all
 * written: the caller mirrors them) from Ō's B rows of P floats in panels (Of), on one rank: S stripes of panel
 * rows, one per thread, balanced by their panel pairs on and above the diagonal. A stripe from row r0 reads the
 * panels from r0 on once per block of PSF__GKC parameters, where a 4 x 4 grid of tiles reads each panel 4 times
 * (on two cores the product is bound by memory); the bits of an entry do not depend on the split. SPRING's
 * kernel, and `make bench`'s "gram" row (bench/bench.c). */
static void psf__gram_stripes(int B, size_t P, const float *Of, double *T) {
    const int np = PSF__PANELS(B), nt = psf__max_threads(), S = nt < np ? nt : np;
PSF__OMP(parallel for schedule(static, 1))
    for (int t = 0; t < S; t++) {
        const int q0 = psf__stripe_start(np, S, t), q1 = psf__stripe_start(np, S, t + 1);
        const int r0 = PSF__GNR * q0, r1 = PSF__GNR * q1 < B ? PSF__GNR * q1 : B;
        if (r1 > r0)
            psf__gram_f32(r1 - r0, B - r0, P, Of + (size_t)r0 * P, Of + (size_t)r0 * P, T + (size_t)r0 * B + r0, B, 1);
    }
}

/* phi = Ō^T T^{-1} (e - mu Ō phi_prev) + mu phi_prev from s->G (Ō, B x P) and e [B] (overwritten).
 * Returns 0, 1 if the kernel is not positive definite to working precision (phi is then untouched), or 2 if an
 * MPI call failed (the error says which). */
static int psf__spring_direction(psf__spring *s, double *e, double mu, double lambda) {
    enum { NB = 4 }; /* T = Ō Ō^T by tiles of a fixed 4 x 4 grid: the upper ones computed, the lower mirrored */
    const int B = s->B, P = (int)s->P;
    double *T = s->T, *v = s->u;
    const double *O = s->G;
    if (s->Of && s->n_ranks == 1) {
        psf__gram_stripes(B, s->P, s->Of, T); /* float32 kernel on one rank: stripes of panel rows */
    } else { /* the tiles of a fixed 4 x 4 grid on or above the diagonal (rank u mod n_ranks computes tile u) */
    PSF__OMP(parallel for schedule(dynamic, 1))
        for (int t = 0; t < NB * NB; t++) {
            const int bi = t / NB, bj = t % NB;
            if (bj < bi || psf__spring_tile_owner(s, bi, bj, NB) != s->rank) continue;
            int i0, i1, j0, j1;
            psf__spring_tile_rows(s, bi, NB, &i0, &i1);
            psf__spring_tile_rows(s, bj, NB, &j0, &j1);
            if (i1 <= i0 || j1 <= j0) continue;
            if (s->Of) /* a diagonal tile computes its upper panel pairs only (mirrored below) */
                psf__gram_f32(i1 - i0, j1 - j0, s->P, s->Of + (size_t)i0 * P, s->Of + (size_t)j0 * P,
                              T + (size_t)i0 * B + j0, B, bi == bj);
            else
                psf__dgemm(0, 1, i1 - i0, j1 - j0, P, 1.0, O + (size_t)i0 * P, P, O + (size_t)j0 * P, P, 0.0,
                          T + (size_t)i0 * B + j0, B);
        }
    }
    if (s->n_ranks > 1 && psf__spring_share_tiles(s, NB)) return 2;
    for (int bi = 0; bi < NB; bi++) { /* mirror the lower triangle: the tiles left of the diagonal tile of each tile
                                         * row and, for the float32 kernel, the skipped part of the diagonal tiles
                                         * (its computed lower entries equal their mirror image bit for bit) */
        int i0, i1;
        psf__spring_tile_rows(s, bi, NB, &i0, &i1);
        for (int i = i0; i < i1; i++)
            for (int j = 0; j < (s->Of ? i : i0); j++) T[(size_t)i * B + j] = T[(size_t)j * B + i];
    }
    for (size_t i = 0; i < (size_t)B * B; i++) T[i] += 1.0 / B;
    memcpy(s->T0, T, sizeof(double) * B * B);
    /* e~ = e - mu Ō phi_prev (Ō phi_prev: s->u, formed by psf__spring_step while it centred Ō) */
    if (mu != 0)
        for (int i = 0; i < B; i++) e[i] -= mu * v[i];
    /* T + lambda I by Cholesky; when it is not positive definite to working precision (lambda at the rounding
     * level of a kernel whose gradients blew up, or below the float32 kernel's error), lambda is raised tenfold,
     * at most PSF__SPRING_RAISES times, from the kept kernel T0 */
    int ok = 0;
    for (int k = 0; k <= PSF__SPRING_RAISES && !ok; k++, lambda *= 10) {
        if (k > 0) memcpy(T, s->T0, sizeof(double) * B * B);
        double trace = 0;
        for (int i = 0; i < B; i++) { T[(size_t)i * B + i] += lambda; trace += T[(size_t)i * B + i]; }
        if (psf__cholesky(B, T)) continue;
        /* lambda_min(T) by three steps of inverse iteration: an unpivoted Cholesky can pass a kernel that is
         * singular to rounding */
        double nv = 0, nu = 0;
        for (int i = 0; i < B; i++) { v[i] = sin(2.399963229728653 * i + 1.0); nv += v[i] * v[i]; }
        for (int i = 0; i < B; i++) v[i] /= sqrt(nv);
        int finite = 1;
        for (int it = 0; it < 3 && finite; it++) {
            psf__chol_solve(B, T, v, 1);
            nu = 0;
            for (int i = 0; i < B; i++) nu += v[i] * v[i];
            nu = sqrt(nu);
            if (!(nu > 0) || !(nu < 1e300)) finite = 0;
            else for (int i = 0; i < B; i++) v[i] /= nu;
        }
        if (finite && 1.0 / nu > (double)((size_t)B + s->P) * 2.220446049250313e-16 * trace) {
            ok = 1;
            s->lambda_used = lambda;
        }
    }
    if (!ok) return 1;
    psf__chol_solve(B, T, e, 1); /* zeta = T^{-1} e~ */
    double zbar = 0;             /* remove the rounding along 1 (an exact no-op: Ō^T 1 = 0) */
    for (int i = 0; i < B; i++) zbar += e[i];
    zbar /= B;
    for (int i = 0; i < B; i++) e[i] -= zbar;
    if (s->Of) { /* from the float32 panels: for each parameter, eight lanes over the panels' rows, in double */
        const int np = PSF__PANELS(B);
        for (int i = 0; i < np * PSF__GNR; i++) s->z[i] = i < B ? e[i] : 0.0;
PSF__OMP(parallel for schedule(static))
        for (int q = 0; q < PSF__SPRING_SLABS; q++) {
            const size_t p0 = s->P * q / PSF__SPRING_SLABS, p1 = s->P * (q + 1) / PSF__SPRING_SLABS;
            for (size_t p = p0; p < p1; p++) {
                double s8[8] = {0, 0, 0, 0, 0, 0, 0, 0};
                for (int pn = 0; pn < np; pn++) {
                    const float *f = s->Of + ((size_t)pn * s->P + p) * PSF__GNR;
                    const double *z = s->z + (size_t)pn * PSF__GNR;
                    for (int r0 = 0; r0 < PSF__GNR; r0 += 8)
                        for (int l = 0; l < 8; l++) s8[l] += (double)f[r0 + l] * z[r0 + l];
                }
                s->phi[p] = mu * s->phi_prev[p] + psf__ddot8_sum(s8, 0.0);
            }
        }
        return 0;
    }
PSF__OMP(parallel for schedule(static))
    for (int q = 0; q < PSF__SPRING_SLABS; q++) { /* phi = mu phi_prev + Ō^T zeta, by fixed ranges of parameters */
        const size_t p0 = s->P * q / PSF__SPRING_SLABS, p1 = s->P * (q + 1) / PSF__SPRING_SLABS;
        for (size_t p = p0; p < p1; p++) s->phi[p] = mu * s->phi_prev[p];
        if (p1 > p0) psf__dgemm(1, 0, (int)(p1 - p0), 1, B, 1.0, O + p0, P, e, 1, 1.0, s->phi + p0, 1);
    }
    return 0;
}

static int psf__spring_step(psf_vmc *v, psf__spring *s, double *step_size) {
    const psf_vmc_config *c = &v->cfg;
    const int B = s->B;
    const size_t P = s->P;
    int n = 0;
    for (int b = 0; b < B; b++) n += s->valid[b];
    if (n < 2) return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: SPRING needs at least 2 walkers with a finite local energy");
    const double rn = 1.0 / sqrt((double)n);
    /* Ō in place of G: centre each parameter's column over the valid walkers and scale by 1/sqrt(n); the rows of
     * walkers without a finite local energy become 0. The means are summed by fixed parameter ranges. */
    double *mean = s->phi; /* free until the direction is formed */
PSF__OMP(parallel for schedule(static))
    for (int q = 0; q < PSF__SPRING_SLABS; q++) {
        const size_t p0 = P * q / PSF__SPRING_SLABS, p1 = P * (q + 1) / PSF__SPRING_SLABS;
        for (size_t p = p0; p < p1; p++) mean[p] = 0;
        for (int b = 0; b < B; b++)
            if (s->valid[b]) {
                if (s->G) {
                    const double *g = s->G + (size_t)b * P;
                    for (size_t p = p0; p < p1; p++) mean[p] += g[p];
                } else {
                    const float *g = s->Gf + (size_t)b * P;
                    for (size_t p = p0; p < p1; p++) mean[p] += g[p];
                }
            }
        for (size_t p = p0; p < p1; p++) mean[p] /= n;
    }
    const double mu = s->n_steps > 0 ? c->spring_mu : 0.0;
    /* the same pass forms the float32 copy of Ō and, for the direction's e~ = e - mu Ō phi_prev, u = Ō phi_prev
     * while each row is in cache (one pass over the B x P reals fewer) */
    if (!s->Of) {
PSF__OMP(parallel for schedule(static))
        for (int b = 0; b < B; b++) {
            double *g = s->G + (size_t)b * P;
            if (s->valid[b]) for (size_t p = 0; p < P; p++) g[p] = (g[p] - mean[p]) * rn;
            else memset(g, 0, sizeof(double) * P);
            if (mu != 0) s->u[b] = psf__ddot8(g, s->phi_prev, 1, (int)P);
        }
    } else { /* by panels of PSF__GNR rows and blocks of PSF__GKC parameters, so that the panel's block of the float
              * copy is written whole while it is in L1; u by psf__dot8's lanes carried from block to block */
PSF__OMP(parallel for schedule(static))
        for (int q = 0; q < PSF__PANELS(B); q++) {
            double s8[PSF__GNR][8], tail[PSF__GNR], c[PSF__GKC];
            float *panel = s->Of + (size_t)q * PSF__GNR * P;
            memset(s8, 0, sizeof s8);
            for (int r = 0; r < PSF__GNR; r++) tail[r] = 0;
            for (size_t k0 = 0; k0 < P; k0 += PSF__GKC) {
                const int kc = P - k0 < PSF__GKC ? (int)(P - k0) : PSF__GKC;
                for (int r = 0; r < PSF__GNR; r++) {
                    const int b = q * PSF__GNR + r;
                    if (b >= B) continue; /* the last panel's slots past B stay 0 from the allocation */
                    const float *g = s->Gf + (size_t)b * P + k0; /* c: the row of Ō as the float copy holds it */
                    if (s->valid[b]) for (int k = 0; k < kc; k++) c[k] = (float)(((double)g[k] - mean[k0 + k]) * rn);
                    else for (int k = 0; k < kc; k++) c[k] = 0;
                    psf__panel_row(panel, r, c, k0, kc);
                    if (mu != 0) {
                        int k = psf__ddot8_lanes(c, s->phi_prev + k0, kc, s8[r]);
                        for (; k < kc; k++) tail[r] += c[k] * s->phi_prev[k0 + k];
                    }
                }
            }
            if (mu != 0)
                for (int r = 0; r < PSF__GNR && q * PSF__GNR + r < B; r++) s->u[q * PSF__GNR + r] = psf__ddot8_sum(s8[r], tail[r]);
        }
    }
    /* e_b = (E~_b - <E~>) / sqrt(n) = weight_b n / (2 sqrt(n)) (the driver's weights are 2 (E~_b - <E~>) / n) */
    for (int b = 0; b < B; b++) s->r[b] = s->valid[b] ? 0.5 * v->weight[b] * n * rn : 0.0;
    const int drc = psf__spring_direction(s, s->r, mu, c->spring_damping);
    if (drc == 2) return PSF_ERR_MPI;
    if (drc)
        return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: the SPRING kernel is not positive definite "
                         "(damping %g raised to %g)", v->step, c->spring_damping, c->spring_damping * 1e8);
    if (s->lambda_used != c->spring_damping) s->n_raised++;
    const double lr = psf__lr_at(v);
    double phi2 = 0;
    for (size_t p = 0; p < P; p++) phi2 += s->phi[p] * s->phi[p];
    double eta = lr;
    const double bound = psf__norm_bound(v, c->spring_norm_constraint);
    if (lr * lr * phi2 > bound) eta = sqrt(bound / phi2);
    psf_real *theta = v->model->params;
    for (size_t p = 0; p < P; p++) theta[p] -= eta * s->phi[p];
    memcpy(s->phi_prev, s->phi, sizeof(double) * P);
    s->n_steps++;
    *step_size = eta;
    return PSF_OK;
}
/* The valid flags are cleared whether the step succeeds or not: the next gradient pass sets them afresh. */
static int psf__spring_update(psf_vmc *v, void *st, int n_walkers, double *step_size) {
    psf__spring *s = (psf__spring *)st;
    (void)n_walkers;
    const int rc = psf__spring_step(v, s, step_size);
    memset(s->valid, 0, (size_t)s->B);
    return rc;
}
static int psf__spring_save(const void *st, FILE *f) {
    const psf__spring *s = (const psf__spring *)st;
    const int32_t n = (int32_t)s->n_steps;
    return psf__wr(f, &n, 4, 1) && psf__wr(f, s->phi_prev, sizeof(double), s->P);
}
static int psf__spring_load(void *st, FILE *f) {
    psf__spring *s = (psf__spring *)st;
    int32_t n;
    const int ok = psf__rd(f, &n, 4, 1) && psf__rd(f, s->phi_prev, sizeof(double), s->P);
    if (ok) s->n_steps = n;
    return ok;
}
static void psf__spring_state(void *st, double *a[2], size_t n[2], long **counter) {
    psf__spring *s = (psf__spring *)st;
    a[0] = s->phi_prev; n[0] = s->P; a[1] = NULL; n[1] = 0; *counter = &s->n_steps;
}
static size_t psf__spring_bytes(const psf_model *m, const psf_vmc_config *cfg, int n_ws, int n_chunks, size_t *state_reals) {
    const int B = cfg->batch;
    (void)n_ws; (void)n_chunks;
    const size_t P = m->n_params, b = (size_t)B;
    *state_reals = P;
    size_t n = psf__alloc_bytes(1, sizeof(psf__spring));
    const size_t row_real = cfg->spring_kernel_fp64 ? sizeof(double) : sizeof(float);
    n = psf__add(n, psf__alloc_bytes(psf__mul(P, b), row_real)); /* the B x P per-walker gradients */
    if (!cfg->spring_kernel_fp64) /* zeta, padded to whole panels */
        n = psf__add(n, psf__alloc_bytes((size_t)PSF__PANELS(B) * PSF__GNR, sizeof(double)));
    n = psf__add(n, psf__alloc_bytes(b, 1));
    n = psf__add(n, psf__mul(2, psf__alloc_bytes(P, sizeof(double))));
    n = psf__add(n, psf__mul(2, psf__alloc_bytes(psf__mul(b, b), sizeof(double)))); /* the B x B kernel and T0 */
    if (!cfg->spring_kernel_fp64) /* the float32 copy of Ō, in panels */
        n = psf__add(n, psf__alloc_bytes(psf__mul(P, (size_t)PSF__PANELS(B) * PSF__GNR), sizeof(float)));
    return psf__add(n, psf__mul(2, psf__alloc_bytes(b, sizeof(double))));
}
static int psf__spring_gather(const psf_vmc *v, void *st) {
    psf__spring *s = (psf__spring *)st;
    const int rc = s->G ? psf__mpi_gather(v, s->G, sizeof(double) * s->P, 1)
                        : psf__mpi_gather(v, s->Gf, sizeof(float) * s->P, 1);
    return rc ? rc : psf__mpi_gather(v, s->valid, 1, 1);
}
static const psf__optimizer_rules psf__spring_rules = {
    "spring", 1, 0.05, psf__spring_init, psf__chunk_nothing, psf__spring_walker, psf__chunk_nothing,
    psf__spring_update, psf__spring_save, psf__spring_load, psf__spring_free, psf__spring_state, psf__spring_bytes,
    psf__spring_gather};

/* ---- The optimizer table: the one place that knows every optimizer -------------------------------------- */
static const psf__optimizer_rules *const psf__optimizers[PSF_OPT_COUNT] = {&psf__adam_rules, &psf__kfac_rules,
                                                                             &psf__spring_rules};

const char *psf_optimizer_name(int opt) { return opt >= 0 && opt < PSF_OPT_COUNT ? psf__optimizers[opt]->name : "?"; }


/* ============================================================================================================
 *  [IMPL: DRIVER] VMC training and evaluation, checkpoints, .npy I/O
 * ============================================================================================================ */


static const psf__optimizer_rules *psf__opt(const psf_vmc *v) { return (const psf__optimizer_rules *)v->opt; }

/* The optimizer's carried state (see psf__optimizer_rules.state): its size, and whether it is all finite. */
static size_t psf__state_reals(const psf_vmc *v) {
    double *a[2];
    size_t n[2];
    long *counter;
    psf__opt(v)->state(v->opt_state, a, n, &counter);
    return n[0] + n[1];
}
static int psf__all_finite(const psf_real *x, size_t n, size_t *bad) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) { if (bad) *bad = i; return 0; }
    return 1;
}
static int psf__state_finite(const psf_vmc *v) {
    double *a[2];
    size_t n[2];
    long *counter;
    psf__opt(v)->state(v->opt_state, a, n, &counter);
    for (int i = 0; i < 2; i++)
        for (size_t j = 0; j < n[i]; j++) if (!isfinite(a[i][j])) return 0;
    return 1;
}
/* The parameters and the optimizer's state into v->backup (keep = 1, before an update), or back from it (keep =
 * 0, rejecting the update); *counter is kept in *saved. Restoring a state that is itself not finite (it was
 * poisoned before the step) resets it to its initial zeros instead; returns 1 then. */
static int psf__keep_state(psf_vmc *v, int keep, long *saved) {
    double *a[2], *bk = v->backup;
    size_t n[2];
    long *counter;
    const size_t P = v->model->n_params;
    psf_real *theta = v->model->params;
    psf__opt(v)->state(v->opt_state, a, n, &counter);
    if (keep) {
        for (size_t p = 0; p < P; p++) bk[p] = theta[p];
        for (int i = 0; i < 2; i++) if (n[i]) memcpy(bk + P + (i ? n[0] : 0), a[i], sizeof(double) * n[i]);
        if (counter) *saved = *counter;
        return 0;
    }
    for (size_t p = 0; p < P; p++) theta[p] = (psf_real)bk[p]; /* exact: bk holds psf_real values */
    for (int i = 0; i < 2; i++) if (n[i]) memcpy(a[i], bk + P + (i ? n[0] : 0), sizeof(double) * n[i]);
    if (counter) *counter = *saved;
    if (psf__state_finite(v)) return 0;
    for (int i = 0; i < 2; i++) if (n[i]) memset(a[i], 0, sizeof(double) * n[i]);
    if (counter) *counter = 0;
    return 1;
}

/* The workspaces psf_vmc_init makes: one per OpenMP thread, after it applied cfg->threads. */
/* ---- MPI: the ranks share the chunks of the fixed reduction tree ------------------------------------------
 *  Rank r of R computes the reduction chunks C r / R .. C (r+1) / R - 1 (C = v->n_chunks) and moves their walkers.
 *  Before anything is reduced, psf__mpi_gather copies every rank's rows (per chunk or per walker) to every rank,
 *  so each rank reduces all chunks in the one fixed order and holds the same bits as a single process would. Only
 *  integer counts are summed by MPI itself (exact in any order). docs/scaling.md gives the volumes.          */
static void psf__mpi_layout(int R, int C, int B, int *rows) { /* rows: chunk displs, counts; walker displs, counts */
    for (int r = 0; r < R; r++) {
        const int c0 = (int)((long)C * r / R), c1 = (int)((long)C * (r + 1) / R);
        const int b0 = (int)((long)B * c0 / C), b1 = (int)((long)B * c1 / C);
        rows[r] = c0; rows[R + r] = c1 - c0; rows[2 * R + r] = b0; rows[3 * R + r] = b1 - b0;
    }
}
/* Every rank's rows of buf (rows of row_bytes bytes, one per chunk, or per walker if by_walker) onto every rank. */
static int psf__mpi_gather(const psf_vmc *v, void *buf, size_t row_bytes, int by_walker) {
#ifdef PSF_USE_MPI
    if (v->n_ranks <= 1) return PSF_OK;
    if (row_bytes > INT_MAX) return psf__fail(PSF_ERR_MPI, "psf_vmc: MPI rows of %zu bytes are too long", row_bytes);
    const int R = v->n_ranks, *d = v->mpi_rows + (by_walker ? 2 * R : 0);
    MPI_Datatype row;
    int rc = MPI_Type_contiguous((int)row_bytes, MPI_BYTE, &row);
    if (rc == MPI_SUCCESS && (rc = MPI_Type_commit(&row)) == MPI_SUCCESS) {
        rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, d + R, d, row, *(const MPI_Comm *)v->cfg.mpi_comm);
        MPI_Type_free(&row);
    }
    if (rc != MPI_SUCCESS) return psf__fail(PSF_ERR_MPI, "psf_vmc: MPI_Allgatherv of %zu-byte rows failed (MPI error %d)", row_bytes, rc);
#else
    (void)v; (void)buf; (void)row_bytes; (void)by_walker;
#endif
    return PSF_OK;
}
/* *x = the sum of every rank's *x (integers: exact in any order). */
static int psf__mpi_sum_long(const psf_vmc *v, long *x) {
#ifdef PSF_USE_MPI
    if (v->n_ranks <= 1) return PSF_OK;
    const int rc = MPI_Allreduce(MPI_IN_PLACE, x, 1, MPI_LONG, MPI_SUM, *(const MPI_Comm *)v->cfg.mpi_comm);
    if (rc != MPI_SUCCESS) return psf__fail(PSF_ERR_MPI, "psf_vmc: MPI_Allreduce of a count failed (MPI error %d)", rc);
#else
    (void)v; (void)x;
#endif
    return PSF_OK;
}
int psf_vmc_rank(const psf_vmc *v) { return v->rank; }
int psf_vmc_bcast(const psf_vmc *v, void *buf, size_t bytes) {
#ifdef PSF_USE_MPI
    if (v->n_ranks <= 1) return PSF_OK;
    if (bytes > INT_MAX) return psf__fail(PSF_ERR_MPI, "psf_vmc_bcast: %zu bytes is too many", bytes);
    const int rc = MPI_Bcast(buf, (int)bytes, MPI_BYTE, 0, *(const MPI_Comm *)v->cfg.mpi_comm);
    if (rc != MPI_SUCCESS) return psf__fail(PSF_ERR_MPI, "psf_vmc_bcast: MPI_Bcast failed (MPI error %d)", rc);
#else
    (void)v; (void)buf; (void)bytes;
#endif
    return PSF_OK;
}
/* After the ranks moved their walkers: everybody's positions, log|psi|, signs and RNG states on every rank. */
static int psf__vmc_sync_walkers(const psf_vmc *v, psf_walkers *w) {
    if (v->n_ranks <= 1) return PSF_OK;
    int rc = psf__mpi_gather(v, w->x, sizeof(psf_real) * 3 * (size_t)w->n_elec, 1);
    if (!rc) rc = psf__mpi_gather(v, w->logpsi, sizeof(double), 1);
    if (!rc) rc = psf__mpi_gather(v, w->sign, sizeof(int), 1);
    if (!rc) rc = psf__mpi_gather(v, w->rng, sizeof(psf_rng), 1);
    return rc;
}
/* psf_mcmc on this rank's walkers, then gathered; returns the pmove of all walkers, or -1 with the error set. */
static double psf__vmc_mcmc(const psf_vmc *v, psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws, int sweeps) {
    const long a0 = w->n_accepted, p0 = w->n_proposed;
    if (psf_mcmc(w, wf, ws, n_ws, sweeps) < 0) return -1.0;
    long acc = w->n_accepted - a0;
    if (psf__mpi_sum_long(v, &acc) || psf__vmc_sync_walkers(v, w)) return -1.0;
    w->n_accepted = a0 + acc;
    w->n_proposed = p0 + (long)w->n_walkers * sweeps;
    return sweeps > 0 ? (double)acc / ((double)w->n_walkers * sweeps) : 0.0;
}
/* psf_walkers_refresh on this rank's walkers, then gathered. */
static int psf__vmc_refresh(const psf_vmc *v, psf_walkers *w, const psf_wavefunction *wf, void **ws, int n_ws) {
    int rc = psf_walkers_refresh(w, wf, ws, n_ws);
    if (!rc && v->n_ranks > 1) rc = psf__mpi_gather(v, w->logpsi, sizeof(double), 1);
    if (!rc && v->n_ranks > 1) rc = psf__mpi_gather(v, w->sign, sizeof(int), 1);
    return rc;
}

/* The MPI rank count of cfg->mpi_comm (1 without one). */
static int psf__vmc_ranks(const psf_vmc_config *cfg) {
    int R = 1;
#ifdef PSF_USE_MPI
    if (cfg->mpi_comm && MPI_Comm_size(*(const MPI_Comm *)cfg->mpi_comm, &R) != MPI_SUCCESS) R = 1;
#else
    (void)cfg;
#endif
    return R > 0 ? R : 1;
}

static int psf__vmc_threads(const psf_vmc_config *cfg) {
#ifdef _OPENMP
    return cfg->threads > 0 ? cfg->threads : psf__max_threads();
#else
    (void)cfg;
    return 1;
#endif
}

int psf_vmc_memory(const psf_model *m, const psf_vmc_config *cfg, size_t *bytes) {
    *bytes = 0;
    if (cfg->batch < 2) return psf__fail(PSF_ERR_ARG, "psf_vmc_memory: batch = %d must be at least 2", cfg->batch);
    if ((int)cfg->optimizer < 0 || cfg->optimizer >= PSF_OPT_COUNT)
        return psf__fail(PSF_ERR_ARG, "psf_vmc_memory: unknown optimizer %d", (int)cfg->optimizer);
    const psf__optimizer_rules *opt = psf__optimizers[cfg->optimizer];
    const size_t P = m->n_params, B = (size_t)cfg->batch;
    const int n_ws = psf__vmc_threads(cfg), n_chunks = cfg->batch < PSF__CHUNKS ? cfg->batch : PSF__CHUNKS;
    size_t state = 0, b = opt->bytes(m, cfg, n_ws, n_chunks, &state); /* the optimizer's init */
    b = psf__add(b, psf__alloc_bytes((size_t)n_ws, sizeof(psf_workspace)));
    b = psf__add(b, psf__alloc_bytes((size_t)n_ws, sizeof(void *)));
    b = psf__add(b, psf__alloc_bytes(4 * (size_t)psf__vmc_ranks(cfg), sizeof(int)));   /* the MPI layout */
    b = psf__add(b, psf__mul(2, psf__alloc_bytes(B, sizeof(double))));                 /* eloc, weight */
    b = psf__add(b, psf__alloc_bytes(P, sizeof(psf_real)));                            /* grad */
    b = psf__add(b, psf__alloc_bytes(psf__mul(P, (size_t)n_chunks), sizeof(psf_real))); /* chunks */
    if (opt->per_walker) b = psf__add(b, psf__alloc_bytes(psf__mul(P, (size_t)n_ws), sizeof(psf_real)));
    b = psf__add(b, psf__alloc_bytes(psf__add(P, state), sizeof(double)));             /* backup */
    b = psf__add(b, psf__alloc_bytes(P, sizeof(psf_real)));                            /* good */
    b = psf__add(b, psf__mul((size_t)n_ws, psf__workspace_bytes(m)));
    *bytes = psf__add(b, psf__walkers_bytes(m->n_elec, cfg->batch));
    return PSF_OK;
}

void psf_vmc_free(psf_vmc *v) {
    if (v->ws) for (int t = 0; t < v->n_ws; t++) psf_workspace_free(&v->ws[t]);
    PSF_FREE(v->ws); PSF_FREE(v->wsp); PSF_FREE(v->eloc); PSF_FREE(v->weight); PSF_FREE(v->grad); PSF_FREE(v->chunks);
    PSF_FREE(v->gwalker); PSF_FREE(v->backup); PSF_FREE(v->good); PSF_FREE(v->mpi_rows);
    if (v->opt && v->opt_state) psf__opt(v)->free(v->opt_state);
    psf_walkers_free(&v->walkers);
    memset(v, 0, sizeof *v);
}

int psf_vmc_init(psf_vmc *v, psf_model *m, const psf_vmc_config *cfg) {
    memset(v, 0, sizeof *v);
    if (cfg->batch < 2) return psf__fail(PSF_ERR_ARG, "psf_vmc_init: batch = %d must be at least 2", cfg->batch);
    if (cfg->mcmc_steps < 1) return psf__fail(PSF_ERR_ARG, "psf_vmc_init: mcmc_steps = %d must be at least 1", cfg->mcmc_steps);
    if (!(cfg->lr >= 0) || !(cfg->lr_delay > 0)) return psf__fail(PSF_ERR_ARG, "psf_vmc_init: lr must be >= 0 and lr_delay > 0");
    if ((int)cfg->optimizer < 0 || cfg->optimizer >= PSF_OPT_COUNT)
        return psf__fail(PSF_ERR_ARG, "psf_vmc_init: unknown optimizer %d", (int)cfg->optimizer);
    if (cfg->optimizer == PSF_OPT_KFAC && (!(cfg->kfac_damping > 0) || !(cfg->kfac_decay >= 0 && cfg->kfac_decay < 1) ||
                                           !(cfg->kfac_norm_constraint > 0)))
        return psf__fail(PSF_ERR_ARG, "psf_vmc_init: KFAC needs damping > 0, 0 <= decay < 1, norm_constraint > 0");
    if (!(cfg->max_bytes >= 0)) return psf__fail(PSF_ERR_ARG, "psf_vmc_init: max_bytes = %g must be >= 0", cfg->max_bytes);
    size_t need;
    int rc = psf_vmc_memory(m, cfg, &need);
    if (rc) return rc;
    if (need == SIZE_MAX)
        return psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: batch %d with %zu parameters needs more bytes than size_t can "
                         "count", cfg->batch, m->n_params);
    if (cfg->max_bytes > 0 && (double)need > cfg->max_bytes)
        return psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: batch %d with %zu parameters needs %zu bytes (%.3g GB), more "
                         "than max_bytes = %.0f (%.3g GB)", cfg->batch, m->n_params, need, 1e-9 * (double)need,
                         cfg->max_bytes, 1e-9 * cfg->max_bytes);
#ifdef _OPENMP
    if (cfg->threads > 0) omp_set_num_threads(cfg->threads);
#endif
#if defined(PSF_USE_CBLAS) && defined(OPENBLAS_VERSION)
    openblas_set_num_threads(1); /* parallelism is over walkers; each matrix product is small */
#endif
    const psf__optimizer_rules *opt = psf__optimizers[cfg->optimizer];
    const size_t P = m->n_params;
    v->model = m;
    v->cfg = *cfg;
    v->step_scale = 1.0;
    v->opt = opt;
    if (v->cfg.lr == 0) v->cfg.lr = opt->default_lr;
    v->wf = psf_model_wavefunction(m);
    v->n_ws = psf__max_threads();
    v->n_chunks = cfg->batch < PSF__CHUNKS ? cfg->batch : PSF__CHUNKS;
    v->rank = 0;
    v->n_ranks = 1;
#ifdef PSF_USE_MPI
    if (cfg->mpi_comm) {
        const MPI_Comm comm = *(const MPI_Comm *)cfg->mpi_comm;
        if (MPI_Comm_rank(comm, &v->rank) != MPI_SUCCESS || MPI_Comm_size(comm, &v->n_ranks) != MPI_SUCCESS) {
            v->rank = 0; v->n_ranks = 1;
            return psf__fail(PSF_ERR_MPI, "psf_vmc_init: MPI_Comm_rank / MPI_Comm_size failed (is MPI initialised?)");
        }
        if (v->n_ranks > v->n_chunks) {
            const int R = v->n_ranks;
            v->rank = 0; v->n_ranks = 1;
            return psf__fail(PSF_ERR_ARG, "psf_vmc_init: %d MPI ranks for %d reduction chunks: at most one rank per chunk "
                             "(a batch of %d walkers has %d; PSF_CHUNKS sets more)", R, v->n_chunks, cfg->batch, v->n_chunks);
        }
    }
#endif
    v->chunk_lo = v->n_chunks * v->rank / v->n_ranks;
    v->chunk_hi = v->n_chunks * (v->rank + 1) / v->n_ranks;
    if (!(v->mpi_rows = (int *)psf__calloc(4 * (size_t)v->n_ranks, sizeof(int)))) {
        v->rank = 0; v->n_ranks = 1;
        return psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory");
    }
    psf__mpi_layout(v->n_ranks, v->n_chunks, cfg->batch, v->mpi_rows);
    v->ws = (psf_workspace *)psf__calloc((size_t)v->n_ws, sizeof(psf_workspace));
    v->wsp = (void **)psf__calloc((size_t)v->n_ws, sizeof(void *));
    v->eloc = (double *)psf__calloc((size_t)cfg->batch, sizeof(double));
    v->weight = (double *)psf__calloc((size_t)cfg->batch, sizeof(double));
    v->grad = (psf_real *)psf__calloc(P, sizeof(psf_real));
    v->chunks = (psf_real *)psf__calloc(psf__mul(P, (size_t)v->n_chunks), sizeof(psf_real));
    if (opt->per_walker) v->gwalker = (psf_real *)psf__calloc(psf__mul(P, (size_t)v->n_ws), sizeof(psf_real));
    if (!v->ws || !v->wsp || !v->eloc || !v->weight || !v->grad || !v->chunks || (opt->per_walker && !v->gwalker)) {
        psf_vmc_free(v);
        return psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory");
    }
    if (!(v->opt_state = opt->init(v))) { psf_vmc_free(v); return PSF_ERR_NOMEM; }
    if (!(v->backup = (double *)psf__calloc(psf__add(P, psf__state_reals(v)), sizeof(double))) ||
        !(v->good = (psf_real *)psf__calloc(P, sizeof(psf_real)))) {
        psf_vmc_free(v);
        return psf__fail(PSF_ERR_NOMEM, "psf_vmc_init: out of memory");
    }
    for (int t = 0; t < v->n_ws; t++) {
        int rc = psf_workspace_init(&v->ws[t], m);
        if (rc) { psf_vmc_free(v); return rc; }
        v->wsp[t] = &v->ws[t];
    }
    rc = psf_walkers_init(&v->walkers, &m->sys, cfg->batch, cfg->seed);
    if (rc) { psf_vmc_free(v); return rc; }
    v->walkers.width = cfg->mcmc_width;
    v->walkers.lo = v->mpi_rows[2 * v->n_ranks + v->rank];
    v->walkers.hi = v->walkers.lo + v->mpi_rows[3 * v->n_ranks + v->rank];
    if ((rc = psf__vmc_refresh(v, &v->walkers, &v->wf, v->wsp, v->n_ws))) { psf_vmc_free(v); return rc; }
    for (int s = 0; s < cfg->burn_in; s++) {
        double pm = psf__vmc_mcmc(v, &v->walkers, &v->wf, v->wsp, v->n_ws, 1);
        if (pm < 0) { psf_vmc_free(v); return PSF_ERR_MPI; }
        psf_mcmc_adapt(&v->walkers, pm);
    }
    return PSF_OK;
}

/* MCMC sweeps and local energies of all walkers; fills st (energy, variance, pmove, timings). The proposal width
 * adapts during training only: evaluation samples with a fixed width (a fixed Metropolis kernel). */
/* Local energies of the walkers w into v->eloc [B] (the jet pass); returns their finite mean, *n_finite their count. */
static double psf__mean_eloc(psf_vmc *v, const psf_walkers *w, int *n_finite) {
    const int B = w->n_walkers, D = v->model->n_dim;
    int lo, hi;
    psf__walker_range(w, &lo, &hi);
PSF__OMP(parallel for schedule(dynamic, 2))
    for (int b = lo; b < hi; b++) {
        psf_real g[3 * PSF_MAX_ELEC];
        psf_eloc el;
        psf_local_energy(&v->model->sys, &v->wf, v->wsp[psf__thread_id()], w->x + (size_t)b * D, g, &el);
        v->eloc[b] = el.total;
    }
    if (psf__mpi_gather(v, v->eloc, sizeof(double), 1)) { /* an MPI failure (the error says so): no energy */
        if (n_finite) *n_finite = 0;
        return NAN;
    }
    double s = 0;
    int n = 0;
    for (int b = 0; b < B; b++) if (isfinite(v->eloc[b])) { s += v->eloc[b]; n++; }
    if (n_finite) *n_finite = n;
    return n ? s / n : NAN;
}

/* FermiNet's reset_if_nan for walkers: a walker whose log|psi| or E_L is not finite takes the position, log|psi|,
 * sign and E_L of the next walker b+1, b+2, ... (cyclically) whose values are finite; the walker keeps its own
 * RNG stream, so the two chains part at the next sweep. (Taking the values instead of recomputing them gives
 * the same bits: log|psi| and E_L are deterministic functions of the position and the parameters.) Processing
 * walkers in order, a walker already reset holds the values of the next good walker after it, so the result is
 * the same as choosing among the walkers that were good before any reset. Returns the number reset (0 if no
 * walker is good: nothing changes). */
static int psf__reset_walkers(psf_vmc *v) {
    psf_walkers *w = &v->walkers;
    const int B = w->n_walkers, D = 3 * w->n_elec;
    int n = 0;
    for (int b = 0; b < B; b++) {
        if (isfinite(w->logpsi[b]) && isfinite(v->eloc[b])) continue;
        int s = (b + 1) % B;
        while (s != b && !(isfinite(w->logpsi[s]) && isfinite(v->eloc[s]))) s = (s + 1) % B;
        if (s == b) return 0; /* only when no walker is good (then b = 0 and nothing was changed) */
        memcpy(w->x + (size_t)b * D, w->x + (size_t)s * D, sizeof(psf_real) * D);
        w->logpsi[b] = w->logpsi[s];
        w->sign[b] = w->sign[s];
        v->eloc[b] = v->eloc[s];
        n++;
    }
    return n;
}

static void psf__sample_and_measure(psf_vmc *v, psf_step_stats *st, int adapt) {
    const int B = v->cfg.batch;
    double t0 = psf_time();
    st->pmove = psf__vmc_mcmc(v, &v->walkers, &v->wf, v->wsp, v->n_ws, v->cfg.mcmc_steps);
    if (adapt && st->pmove >= 0) psf_mcmc_adapt(&v->walkers, st->pmove);
    st->width = v->walkers.width;
    double t1 = psf_time();
    int nf;
    double mean = psf__mean_eloc(v, &v->walkers, &nf);
    st->n_nonfinite = B - nf;
    int bad = nf != B;
    for (int b = 0; b < B && !bad; b++) bad = !isfinite(v->walkers.logpsi[b]);
    if (bad && (st->n_reset = psf__reset_walkers(v)) > 0) { /* every walker is finite now */
        double sum = 0;
        for (int b = 0; b < B; b++) sum += v->eloc[b];
        mean = sum / B;
        nf = B;
    } else if (bad) mean = NAN; /* no walker has both a finite log|psi| and a finite E_L */
    double t2 = psf_time(), s2 = 0;
    for (int b = 0; b < B; b++) if (isfinite(v->eloc[b])) s2 += (v->eloc[b] - mean) * (v->eloc[b] - mean);
    st->energy = mean;
    st->variance = nf > 1 ? s2 / (nf - 1) : NAN;
    st->t_sample = t1 - t0;
    st->t_jet = t2 - t1;
}

/* Gradient of the energy: g = 2/B sum_b (E~_b - <E~>) grad_theta log|psi(x_b)|, with E~ the local energy clipped
 * to <E_L> +- clip_scale * <|E_L - <E_L>|> (FermiNet: Pfau et al. 2020, §"Optimization"; clipping is used for the
 * gradient only). Walkers with a non-finite E_L get weight 0. Returns non-zero if no walker is usable. */
/* v->grad = the sum of the chunks' partial gradients, in chunk order (the fixed reduction tree). */
static void psf__sum_chunks(psf_vmc *v) {
    const size_t P = v->model->n_params;
    const int C = v->n_chunks;
PSF__OMP(parallel for schedule(static))
    for (long p = 0; p < (long)P; p++) {
        psf_real s = 0;
        for (int c = 0; c < C; c++) s += v->chunks[(size_t)c * P + (size_t)p];
        v->grad[p] = s;
    }
}

static int psf__energy_gradient(psf_vmc *v, double mean) {
    const int B = v->cfg.batch, D = v->model->n_dim, C = v->n_chunks;
    const size_t P = v->model->n_params;
    const psf__optimizer_rules *opt = psf__opt(v);
    double tv = 0, cm = 0, *w = v->weight;
    int nf = 0;
    for (int b = 0; b < B; b++) if (isfinite(v->eloc[b])) { tv += fabs(v->eloc[b] - mean); nf++; }
    if (nf == 0) return 1;
    tv /= nf;
    for (int b = 0; b < B; b++) {
        if (!isfinite(v->eloc[b])) { w[b] = NAN; continue; }
        double e = v->eloc[b];
        const double lo = mean - v->cfg.clip_scale * tv, hi = mean + v->cfg.clip_scale * tv;
        w[b] = e < lo ? lo : (e > hi ? hi : e);
        cm += w[b];
    }
    cm /= nf;
    for (int b = 0; b < B; b++) w[b] = isfinite(w[b]) ? 2.0 * (w[b] - cm) / nf : 0.0;
PSF__OMP(parallel for schedule(dynamic, 1))
    for (int c = v->chunk_lo; c < v->chunk_hi; c++) { /* this rank's chunks (all of them on one process) */
        psf_real *acc = v->chunks + (size_t)c * P;
        const int tid = psf__thread_id();
        psf_workspace *ws = &v->ws[tid];
        memset(acc, 0, sizeof(psf_real) * P);
        const int b0 = (int)((long)B * c / C), b1 = (int)((long)B * (c + 1) / C);
        if (!opt->per_walker) { /* the weights go straight into the backward pass */
            for (int b = b0; b < b1; b++) {
                if (w[b] == 0.0) continue;
                int sg;
                psf_model_logpsi(v->model, ws, v->walkers.x + (size_t)b * D, &sg);
                if (!sg) continue;
                psf_model_backward(v->model, ws, w[b], acc);
            }
            continue;
        }
        /* per-walker gradient of log|psi| (seed 1): the optimizer sees it, the energy gradient sums it */
        psf_real *g = v->gwalker + (size_t)tid * P;
        opt->chunk_begin(v->opt_state, c, ws);
        for (int b = b0; b < b1; b++) {
            if (!isfinite(v->eloc[b])) continue;
            int sg;
            psf_model_logpsi(v->model, ws, v->walkers.x + (size_t)b * D, &sg);
            if (!sg) continue;
            memset(g, 0, sizeof(psf_real) * P);
            psf_model_backward(v->model, ws, 1.0, g);
            for (size_t p = 0; p < P; p++) acc[p] += w[b] * g[p];
            opt->walker(v->opt_state, c, b, g);
        }
        opt->chunk_end(v->opt_state, c, ws);
    }
    if (v->n_ranks > 1) {
        int rc = psf__mpi_gather(v, v->chunks, sizeof(psf_real) * P, 0);
        if (!rc && opt->gather) rc = opt->gather(v, v->opt_state);
        if (rc) return rc;
    }
    psf__sum_chunks(v);
    return 0;
}

int psf_vmc_train_step(psf_vmc *v, psf_step_stats *st) {
    memset(st, 0, sizeof *st);
    const size_t P = v->model->n_params;
    size_t bad;
    if (!psf__all_finite(v->model->params, P, &bad)) { /* updates cannot do this (they are rejected): a caller did */
        if (!v->has_good)
            return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: parameter %zu is not finite before the step "
                             "and no accepted update to restore", v->step, bad);
        memcpy(v->model->params, v->good, sizeof(psf_real) * P);
        if (!psf__state_finite(v)) {
            long c = 0;
            psf__keep_state(v, 1, &c); /* only to zero the state: keep, then restore the non-finite copy */
            psf__keep_state(v, 0, &c);
        }
        if (psf__vmc_refresh(v, &v->walkers, &v->wf, v->wsp, v->n_ws)) return PSF_ERR_MPI;
        st->restored = 1;
    }
    psf__sample_and_measure(v, st, 1);
    st->step = v->step;
    if (!isfinite(st->energy))
        return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: no walker has a finite log|psi| and local energy", v->step);
    double t0 = psf_time();
    const int grc = psf__energy_gradient(v, st->energy);
    if (grc == PSF_ERR_MPI) return grc;
    if (grc) return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: gradient failed", v->step);
    double t1 = psf_time();
    double g2 = 0;
    for (size_t p = 0; p < P; p++) g2 += v->grad[p] * v->grad[p];
    st->grad_norm = sqrt(g2);
    int nf = 0;
    for (int b = 0; b < v->cfg.batch; b++) nf += isfinite(v->eloc[b]) ? 1 : 0;
    long counter = 0;
    psf__keep_state(v, 1, &counter);
    const int rc = psf__opt(v)->update(v, v->opt_state, nf, &st->step_size);
    char why[512] = "";
    if (rc == PSF_ERR_NUMERIC) { /* the optimizer's message without its "psf_vmc_train_step: step N: " */
        char pre[64];
        const char *e = psf_last_error();
        const int k = snprintf(pre, sizeof pre, "psf_vmc_train_step: step %ld: ", v->step);
        snprintf(why, sizeof why, "%s", strncmp(e, pre, (size_t)k) == 0 ? e + k : e);
    }
    else if (rc) return rc;
    else if (!psf__all_finite(v->model->params, P, &bad)) snprintf(why, sizeof why, "parameter %zu became non-finite", bad);
    else if (!psf__state_finite(v)) snprintf(why, sizeof why, "the %s state became non-finite", psf__opt(v)->name);
    if (why[0]) { /* reject: parameters and optimizer state as before the update; the walkers' log|psi| still hold */
        const int reset = psf__keep_state(v, 0, &counter);
        st->skipped = 1;
        st->step_size = 0;
        if (++v->n_rejected >= PSF_MAX_REJECTED)
            return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: %d consecutive updates rejected (the last: %s); "
                             "the parameters are those of the last good step", v->step, v->n_rejected, why);
        psf__fail(PSF_ERR_NUMERIC, "psf_vmc_train_step: step %ld: update rejected (%s)%s", v->step, why,
                  reset ? "; the optimizer state was not finite and is reset" : "");
    } else {
        v->n_rejected = 0;
        memcpy(v->good, v->model->params, sizeof(psf_real) * P);
        v->has_good = 1;
        if (psf__vmc_refresh(v, &v->walkers, &v->wf, v->wsp, v->n_ws)) return PSF_ERR_MPI;
    }
    double t2 = psf_time();
    st->t_backward = t1 - t0;
    st->t_optimizer = t2 - t1;
    v->step++;
    return PSF_OK;
}

int psf_vmc_gap(psf_vmc *v, int sweeps, double *e_walkers, double *e_decorrelated) {
    const psf_walkers *w = &v->walkers;
    const int B = w->n_walkers, D = v->model->n_dim;
    psf_walkers c = *w;
    c.x = (psf_real *)psf__calloc(psf__mul((size_t)B, (size_t)D), sizeof(psf_real));
    c.logpsi = (double *)psf__calloc((size_t)B, sizeof(double));
    c.sign = (int *)psf__calloc((size_t)B, sizeof(int));
    c.rng = (psf_rng *)psf__calloc((size_t)B, sizeof(psf_rng));
    int rc = PSF_OK;
    if (!c.x || !c.logpsi || !c.sign || !c.rng) rc = psf__fail(PSF_ERR_NOMEM, "psf_vmc_gap: out of memory");
    else {
        memcpy(c.x, w->x, sizeof(psf_real) * (size_t)B * D);
        memcpy(c.logpsi, w->logpsi, sizeof(double) * (size_t)B);
        memcpy(c.sign, w->sign, sizeof(int) * (size_t)B);
        for (int b = 0; b < B; b++) psf_rng_seed(&c.rng[b], v->cfg.seed + 0x9E37ULL * (uint64_t)v->step, 0x2000000ULL + (uint64_t)b);
        *e_walkers = psf__mean_eloc(v, w, NULL);
        if (psf__vmc_mcmc(v, &c, &v->wf, v->wsp, v->n_ws, sweeps) < 0) rc = PSF_ERR_ARG;
        else *e_decorrelated = psf__mean_eloc(v, &c, NULL);
        if (!rc && (!isfinite(*e_walkers) || !isfinite(*e_decorrelated)))
            rc = psf__fail(PSF_ERR_NUMERIC, "psf_vmc_gap: no finite local energy");
    }
    PSF_FREE(c.x); PSF_FREE(c.logpsi); PSF_FREE(c.sign); PSF_FREE(c.rng);
    return rc;
}

int psf_vmc_eval_step(psf_vmc *v, psf_step_stats *st) {
    memset(st, 0, sizeof *st);
    psf__sample_and_measure(v, st, 0);
    st->step = v->step;
    if (!isfinite(st->energy))
        return psf__fail(PSF_ERR_NUMERIC, "psf_vmc_eval_step: no walker has a finite local energy");
    return PSF_OK;
}

/* ---- Hartree–Fock pretraining (psf_vmc_pretrain; the loss and sampling are in its [API] comment) ---------- */

/* The reference matrix Phi_ref (N x N, block diagonal by spin) at one walker's coordinates. */
static int psf__reference_matrix(const psf_reference *ref, const psf_real *x, double *phi, double *val) {
    const int N = ref->n_up + ref->n_down;
    memset(phi, 0, sizeof(double) * (size_t)N * N);
    for (int i = 0; i < N; i++) {
        const int up = i < ref->n_up, n = up ? ref->n_up : ref->n_down, j0 = up ? 0 : ref->n_up;
        const int rc = ref->orbitals(ref, up ? 0 : 1, x + 3 * i, n, val, NULL, NULL);
        if (rc) return rc;
        for (int o = 0; o < n; o++) phi[(size_t)i * N + j0 + o] = val[o];
    }
    return PSF_OK;
}

/* The Pfaffian head's target from Phi_ref (N x N): the pair matrix Phi' J Phi'^T of the first c = N - b reference
 * orbitals (J the symplectic unit: columns 2q and 2q+1 paired), bordered for odd N (b = 1) by the last one, so
 * that Pf tgt = det Phi_ref (docs/method.md section 4a). tgt is n x n, n = N + b. The pair-MLP form is fitted to
 * it directly; the bilinear form reaches it through psf__reference_features. */
static void psf__reference_pair_matrix(int N, const double *phi, double *tgt) {
    const int b = N & 1, c = N - b, n = N + b;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int q = 0; q < c; q += 2)
                s += phi[(size_t)i * N + q] * phi[(size_t)j * N + q + 1] - phi[(size_t)i * N + q + 1] * phi[(size_t)j * N + q];
            tgt[(size_t)i * n + j] = s;
        }
    if (!b) return;
    for (int i = 0; i < N; i++) { tgt[(size_t)i * n + N] = phi[(size_t)i * N + N - 1]; tgt[(size_t)N * n + i] = -phi[(size_t)i * N + N - 1]; }
    tgt[(size_t)N * n + N] = 0;
}

/* The Pfaffian head's feature target from Phi_ref (N x N): N x (F + b) enveloped features whose first c = N - b
 * columns are the first c reference orbitals, then F - c zeros, and for odd N (b = 1) the last reference orbital
 * in the border column. With W - W^T = J on the first c features, the pair matrix of these features is
 * psf__reference_pair_matrix's, whatever the rest of W. */
static void psf__reference_features(int N, int F, const double *phi, double *tgt) {
    const int b = N & 1, c = N - b, Fc = F + b;
    for (int i = 0; i < N; i++) {
        for (int j = 0; j < Fc; j++) tgt[(size_t)i * Fc + j] = j < c ? phi[(size_t)i * N + j] : 0;
        if (b) tgt[(size_t)i * Fc + F] = phi[(size_t)i * N + N - 1];
    }
}

int psf_vmc_pretrain(psf_vmc *v, const psf_reference *ref, int steps, double lr, double *losses) {
    psf_model *m = v->model;
    const int N = m->n_elec, D = m->n_dim, B = v->cfg.batch, C = v->n_chunks, T = v->n_ws, pf = m->cfg.orbitals == PSF_ORBITALS_PFAFFIAN;
    int on = m->orbital_node;
    /* the BILINEAR_MLP form's orbital node is PAIR + SKEW with nu's output at 0: pretrained through the PAIR node */
    if (pf && on > 0 && on < m->n_nodes && m->nodes[on].op == PSF_OP_ADD) on = m->nodes[on].in0;
    const int n = pf ? N + (N & 1) : N; /* order of the matrices */
    const int mlp = pf && on > 0 && on < m->n_nodes && m->nodes[on].op == PSF_OP_SKEW; /* the pair-MLP form */
    const size_t P = m->n_params, NN = (size_t)N * N, nn = (size_t)n * n;
    if (ref->n_up != m->sys.n_up || ref->n_down != m->sys.n_down || !ref->orbitals)
        return psf__fail(PSF_ERR_ARG, "psf_vmc_pretrain: the reference has %d up, %d down electrons, the system %d, %d",
                         ref->n_up, ref->n_down, m->sys.n_up, m->sys.n_down);
    if (on <= 0 || PSF__N(&m->nodes[on]) % nn != 0 || (int)m->nodes[on].cols != n ||
        (pf && ((m->nodes[on].op != PSF_OP_PAIR && !mlp) || m->nodes[on].ib != (N & 1))))
        return psf__fail(PSF_ERR_ARG, "psf_vmc_pretrain: the model has no %d x %d %s matrices", n, n, pf ? "pair" : "orbital");
    if (steps < 0 || !(lr > 0)) return psf__fail(PSF_ERR_ARG, "psf_vmc_pretrain: steps = %d, lr = %g (need >= 0, > 0)", steps, lr);
    const int K = (int)(PSF__N(&m->nodes[on]) / nn);
    /* the fitted node: the orbital matrices, the pair-MLP form's pair matrices, or the bilinear Pfaffian head's
     * enveloped features ((K N) x (F + b)); NF reals of target per block */
    const int fit = pf && !mlp ? m->nodes[on].in0 : on, Fc = m->nodes[fit].cols, b = pf ? N & 1 : 0, F = Fc - b;
    const size_t nM = PSF__N(&m->nodes[fit]), NF = mlp ? nn : (size_t)N * Fc;
    const double scale = 1.0 / ((double)B * nM);
    if (pf && !mlp && F < N - b) /* excluded by psf_model_init */
        return psf__fail(PSF_ERR_ARG, "psf_vmc_pretrain: %d orbital features for %d electrons", F, N);
    if (pf && !mlp && steps > 0) /* W_k - W_k^T = J on the first N - b features (the rest of W_k keeps its values) */
        for (int k = 0; k < K; k++) {
            psf_real *W = m->params + m->nodes[on].p_off + (size_t)k * F * F;
            for (int i = 0; i < N - b; i++)
                for (int j = 0; j < N - b; j++) W[(size_t)i * F + j] = (j == i + 1 && i % 2 == 0) ? 1 : 0;
        }
    psf_reference rc_ref = *ref;
    psf_wavefunction rwf = psf_reference_wavefunction(&rc_ref);
    double *am = (double *)psf__calloc(P, sizeof(double)), *av = (double *)psf__calloc(P, sizeof(double));
    const size_t per = NN + NF + (size_t)N; /* per thread: Phi_ref, target, orbital values; and the adjoint */
    double *buf = (double *)psf__calloc(psf__mul((size_t)T, per), sizeof(double));
    psf_real *adjs = (psf_real *)psf__calloc(psf__mul((size_t)T, nM), sizeof(psf_real));
    double *closs = (double *)psf__calloc((size_t)C, sizeof(double));
    void **rws = (void **)psf__calloc((size_t)T, sizeof(void *));
    int rc = (!am || !av || !buf || !adjs || !closs || !rws) ? psf__fail(PSF_ERR_NOMEM, "psf_vmc_pretrain: out of memory") : PSF_OK;
    for (int t = 0; t < T && !rc; t++)
        if (!(rws[t] = rwf.ws_new(rwf.ctx))) rc = psf__fail(PSF_ERR_NOMEM, "psf_vmc_pretrain: out of memory");
    if (!rc) rc = psf__vmc_refresh(v, &v->walkers, &rwf, rws, T);
    for (int s = 0; s < steps && !rc; s++) {
        const double pm = psf__vmc_mcmc(v, &v->walkers, &rwf, rws, T, v->cfg.mcmc_steps);
        if (pm < 0) { rc = PSF_ERR_MPI; break; }
        psf_mcmc_adapt(&v->walkers, pm);
PSF__OMP(parallel for schedule(dynamic, 1))
        for (int c = v->chunk_lo; c < v->chunk_hi; c++) { /* this rank's chunks */
            const int tid = psf__thread_id();
            psf_workspace *ws = &v->ws[tid];
            double *phi = buf + (size_t)tid * per, *tgt = phi + NN, *val = tgt + NF, l = 0;
            psf_real *adj = adjs + (size_t)tid * nM;
            psf_real *acc = v->chunks + (size_t)c * P;
            memset(acc, 0, sizeof(psf_real) * P);
            const int b0 = (int)((long)B * c / C), b1 = (int)((long)B * (c + 1) / C);
            for (int b = b0; b < b1; b++) {
                const psf_real *x = v->walkers.x + (size_t)b * D;
                const psf_real *M = psf_model_eval_node(m, ws, x, fit, 0);
                if (psf__reference_matrix(&rc_ref, x, phi, val)) { l = NAN; continue; }
                if (mlp) psf__reference_pair_matrix(N, phi, tgt);
                else if (pf) psf__reference_features(N, F, phi, tgt);
                else memcpy(tgt, phi, sizeof(double) * NN);
                for (size_t q = 0; q < nM; q++) {
                    const double d = M[q] - tgt[q % NF];
                    l += d * d * scale;
                    adj[q] = 2.0 * d * scale;
                }
                psf_model_backward_node(m, ws, fit, adj, acc);
            }
            closs[c] = l;
        }
        if (v->n_ranks > 1 && ((rc = psf__mpi_gather(v, closs, sizeof(double), 0)) ||
                               (rc = psf__mpi_gather(v, v->chunks, sizeof(psf_real) * P, 0))))
            break;
        double loss = 0;
        for (int c = 0; c < C; c++) loss += closs[c];
        if (losses) losses[s] = loss;
        if (!isfinite(loss)) { rc = psf__fail(PSF_ERR_NUMERIC, "psf_vmc_pretrain: step %d: the loss is not finite", s); break; }
        psf__sum_chunks(v);
        psf__adam_apply(&v->cfg, s + 1.0, lr, P, v->grad, am, av, m->params);
    }
    for (int t = 0; t < T; t++) if (rws && rws[t]) rwf.ws_free(rwf.ctx, rws[t]);
    PSF_FREE(am); PSF_FREE(av); PSF_FREE(buf); PSF_FREE(adjs); PSF_FREE(closs); PSF_FREE(rws);
    if (rc) return rc;
    /* back to |psi_net|^2: the walkers start from the reference's distribution */
    v->walkers.width = v->cfg.mcmc_width;
    if ((rc = psf__vmc_refresh(v, &v->walkers, &v->wf, v->wsp, v->n_ws))) return rc;
    for (int s = 0; s < v->cfg.burn_in; s++) {
        const double pm = psf__vmc_mcmc(v, &v->walkers, &v->wf, v->wsp, v->n_ws, 1);
        if (pm < 0) return PSF_ERR_MPI;
        psf_mcmc_adapt(&v->walkers, pm);
    }
    return PSF_OK;
}

/* ---- checkpoints (format 3) ------------------------------------------------------------------------------
 *  "PSFCKPT3", then PSF__CKPT_NFIELDS int32 header fields (below; a mismatch on load names the field), int64
 *  n_params, int64 step, R and Z of the nuclei, the parameters, the walkers (width, x, RNG states), the
 *  optimizer's name (16 bytes) and its state (its own save rule), and last the CRC-32 (IEEE 802.3, the zlib
 *  polynomial, little-endian uint32) of all bytes before it. Format 2 had no checksum; format 1 no ansatz kind. */
#define PSF__CKPT_MAGIC "PSFCKPT3"

/* CRC-32 (reflected, polynomial 0xEDB88320, as zlib's crc32): crc = psf__crc32(crc, p, n), starting from 0. */
static uint32_t psf__crc32(uint32_t crc, const unsigned char *p, size_t n) {
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}
/* The CRC-32 of the first n bytes of an open file (read from the start); returns 0 on a read error. */
static int psf__crc32_file(FILE *f, long n, uint32_t *crc) {
    unsigned char buf[65536];
    *crc = 0;
    if (fseek(f, 0, SEEK_SET) != 0) return 0;
    while (n > 0) {
        const size_t k = n < (long)sizeof buf ? (size_t)n : sizeof buf;
        if (fread(buf, 1, k, f) != k) return 0;
        *crc = psf__crc32(*crc, buf, k);
        n -= (long)k;
    }
    return 1;
}
/* Flush a file's data to the disk before it is renamed into place (POSIX; elsewhere only the C library's
 * buffers are flushed). */
#if (defined(__unix__) || defined(__APPLE__)) && !defined(PSF_NO_FSYNC)
#ifdef __cplusplus
#include <unistd.h> /* C++ must see them with their C linkage (g++ and clang++ on glibc define _GNU_SOURCE) */
#else
int fileno(FILE *); /* declared here: strict C99 / C11 <stdio.h>, <unistd.h> hide these POSIX functions */
int fsync(int);
#endif
static int psf__sync(FILE *f) { return fflush(f) == 0 && fsync(fileno(f)) == 0; }
#else
static int psf__sync(FILE *f) { return fflush(f) == 0; }
#endif
/* PATH's ".prev" name: "dir/checkpoint.bin" -> "dir/checkpoint.prev.bin"; without an extension, PATH.prev. */
static void psf__prev_name(const char *path, char *out, size_t n) {
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (dot && (!slash || dot > slash + 1)) snprintf(out, n, "%.*s.prev%s", (int)(dot - path), path, dot);
    else snprintf(out, n, "%s.prev", path);
}
#define PSF__CKPT_NFIELDS 24
#define PSF__CKPT_FIELDS(X, m, v)                                                                              \
    X("real size", (int32_t)sizeof(psf_real)) X("n_atoms", (m)->sys.n_atoms) X("n_up", (m)->sys.n_up)         \
    X("n_down", (m)->sys.n_down) X("ansatz", (int32_t)(m)->cfg.ansatz)                                        \
    X("layers", (m)->cfg.psiformer.n_layers) X("heads", (m)->cfg.psiformer.n_heads)                            \
    X("head_dim", (m)->cfg.psiformer.head_dim) X("mlp_hidden", (m)->cfg.psiformer.mlp_hidden)                 \
    X("layernorm", (m)->cfg.psiformer.use_layernorm) X("orbitals", (int32_t)(m)->cfg.orbitals)                 \
    X("dets", (m)->cfg.n_dets) X("jastrow", (m)->cfg.use_jastrow) X("en_cusp", (m)->cfg.use_en_cusp)          \
    X("batch", (v)->cfg.batch) X("optimizer", (int32_t)(v)->cfg.optimizer)                                     \
    X("pf_orbitals", (m)->cfg.pf_orbitals) X("pf_pair", (int32_t)(m)->cfg.pf_pair) X("pf_hidden", (m)->cfg.pf_hidden)

#define PSF__CKPT_ONE(nm, x) +1
PSF__STATIC_ASSERT(0 PSF__CKPT_FIELDS(PSF__CKPT_ONE, m, v) <= PSF__CKPT_NFIELDS, "checkpoint header: too many fields");
#undef PSF__CKPT_ONE

/* This run's header fields and their names; returns their count. */
static int psf__ckpt_header(const psf_vmc *v, int32_t *val, const char **name) {
    const psf_model *m = v->model;
    int n = 0;
#define PSF__CKPT_FIELD(nm, x) name[n] = nm; val[n++] = (int32_t)(x);
    PSF__CKPT_FIELDS(PSF__CKPT_FIELD, m, v)
#undef PSF__CKPT_FIELD
    for (int i = n; i < PSF__CKPT_NFIELDS; i++) { name[i] = "reserved"; val[i] = 0; }
    return n;
}

int psf_vmc_save(const psf_vmc *v, const char *path) {
    char tmp[1024], opt_name[16] = {0};
    size_t bad; /* nothing non-finite reaches the disk: the file there, if any, stays as it was */
    if (v->rank != 0) return PSF_OK; /* MPI: every rank holds the same state; rank 0 writes it */
    if (!psf__all_finite(v->model->params, v->model->n_params, &bad))
        return psf__fail(PSF_ERR_NUMERIC, "%s: not written: parameter %zu is not finite (an existing checkpoint is kept)", path, bad);
    if (!psf__all_finite(v->walkers.x, (size_t)v->cfg.batch * v->model->n_dim, &bad) || !isfinite(v->walkers.width))
        return psf__fail(PSF_ERR_NUMERIC, "%s: not written: walker %zu has a non-finite coordinate or the proposal width is "
                         "not finite (an existing checkpoint is kept)", path, isfinite(v->walkers.width) ? bad / v->model->n_dim : 0);
    if (!psf__state_finite(v))
        return psf__fail(PSF_ERR_NUMERIC, "%s: not written: the %s state is not finite (an existing checkpoint is kept)",
                         path, psf__opt(v)->name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open for writing", tmp);
    const psf_model *m = v->model;
    int32_t hdr[PSF__CKPT_NFIELDS];
    const char *names[PSF__CKPT_NFIELDS];
    psf__ckpt_header(v, hdr, names);
    snprintf(opt_name, sizeof opt_name, "%s", psf__opt(v)->name);
    const int64_t n_params = (int64_t)m->n_params, step = v->step;
    int ok = psf__wr(f, PSF__CKPT_MAGIC, 1, 8) && psf__wr(f, hdr, sizeof hdr, 1) && psf__wr(f, &n_params, 8, 1) &&
             psf__wr(f, &step, 8, 1) && psf__wr(f, m->sys.R, sizeof m->sys.R, 1) && psf__wr(f, m->sys.Z, sizeof m->sys.Z, 1) &&
             psf__wr(f, m->params, sizeof(psf_real), m->n_params) && psf__wr(f, &v->walkers.width, sizeof(double), 1) &&
             psf__wr(f, v->walkers.x, sizeof(psf_real), (size_t)v->cfg.batch * m->n_dim) &&
             psf__wr(f, v->walkers.rng, sizeof(psf_rng), (size_t)v->cfg.batch) && psf__wr(f, opt_name, 1, sizeof opt_name) &&
             psf__opt(v)->save(v->opt_state, f);
    if (fclose(f) != 0) ok = 0;
    if (!ok) { remove(tmp); return psf__fail(PSF_ERR_IO, "%s: write failed", tmp); }
    /* the checksum of what actually reached the file, appended; then the data to the disk */
    uint32_t crc = 0;
    f = fopen(tmp, "r+b");
    ok = f != NULL;
    if (f) {
        long size = 0;
        ok = fseek(f, 0, SEEK_END) == 0 && (size = ftell(f)) > 0 && psf__crc32_file(f, size, &crc) &&
             fseek(f, 0, SEEK_END) == 0;
        const unsigned char le[4] = {(unsigned char)crc, (unsigned char)(crc >> 8), (unsigned char)(crc >> 16),
                                     (unsigned char)(crc >> 24)};
        ok = ok && psf__wr(f, le, 1, 4) && psf__sync(f);
        if (fclose(f) != 0) ok = 0;
    }
    if (!ok) { remove(tmp); return psf__fail(PSF_ERR_IO, "%s: write failed (checksum or flush to disk)", tmp); }
    char prev[1040];
    psf__prev_name(path, prev, sizeof prev);
    FILE *old = fopen(path, "rb");
    if (old) {
        fclose(old);
        if (rename(path, prev) != 0) return psf__fail(PSF_ERR_IO, "%s: cannot keep the previous checkpoint as %s", path, prev);
    }
    if (rename(tmp, path) != 0) return psf__fail(PSF_ERR_IO, "%s: cannot rename %s into place", path, tmp);
    return PSF_OK;
}

int psf_vmc_load(psf_vmc *v, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open checkpoint", path);
    psf_model *m = v->model;
    char magic[8], opt_name[16];
    int32_t hdr[PSF__CKPT_NFIELDS], want[PSF__CKPT_NFIELDS];
    const char *names[PSF__CKPT_NFIELDS];
    int64_t n_params, step;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0) size = ftell(f);
    if (size == 0) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: empty file, not a checkpoint", path); }
    if (size < 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return psf__fail(PSF_ERR_IO, "%s: cannot read", path); }
    if (!psf__rd(f, magic, 1, 8) || memcmp(magic, "PSFCKPT", 7) != 0) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: not a psiformer.h checkpoint (magic bytes differ from %s)", path, PSF__CKPT_MAGIC);
    }
    if (magic[7] != PSF__CKPT_MAGIC[7]) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: written by %s version of psiformer.h (checkpoint format %c; this version reads format %c)",
                         path, magic[7] < PSF__CKPT_MAGIC[7] ? "an older" : "a newer", magic[7], PSF__CKPT_MAGIC[7]);
    }
    /* the checksum over everything before the last 4 bytes, before anything is interpreted */
    unsigned char le[4];
    uint32_t crc;
    if (size < 8 + 4 || fseek(f, size - 4, SEEK_SET) != 0 || !psf__rd(f, le, 1, 4) || !psf__crc32_file(f, size - 4, &crc)) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: truncated (%ld bytes)", path, size);
    }
    const uint32_t stored = (uint32_t)le[0] | (uint32_t)le[1] << 8 | (uint32_t)le[2] << 16 | (uint32_t)le[3] << 24;
    if (stored != crc) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: checksum mismatch (CRC-32 %08lx stored, %08lx computed): the file is truncated "
                         "or corrupted; nothing was loaded", path, (unsigned long)stored, (unsigned long)crc);
    }
    if (fseek(f, 8, SEEK_SET) != 0 || !psf__rd(f, hdr, sizeof hdr, 1) || !psf__rd(f, &n_params, 8, 1) || !psf__rd(f, &step, 8, 1)) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: truncated header", path);
    }
    psf__ckpt_header(v, want, names);
    for (int i = 0; i < PSF__CKPT_NFIELDS; i++)
        if (hdr[i] != want[i]) {
            fclose(f);
            return psf__fail(PSF_ERR_FORMAT, "%s: header field '%s' is %d in the file but %d in this run", path, names[i], hdr[i], want[i]);
        }
    if (n_params != (int64_t)m->n_params) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: field 'n_params' is %lld in the file but %zu in this run", path, (long long)n_params, m->n_params);
    }
    double R[PSF_MAX_ATOMS][3], Z[PSF_MAX_ATOMS];
    int ok = psf__rd(f, R, sizeof R, 1) && psf__rd(f, Z, sizeof Z, 1);
    if (ok && (memcmp(R, m->sys.R, sizeof R) != 0 || memcmp(Z, m->sys.Z, sizeof Z) != 0)) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: field 'nuclei' (positions or charges) differs from this run's system", path);
    }
    /* parameters and walkers into temporaries: the driver changes only when the whole body has been read */
    const size_t nx = (size_t)v->cfg.batch * m->n_dim;
    psf_real *params = (psf_real *)psf__calloc(psf__add(m->n_params, nx), sizeof(psf_real));
    psf_rng *rng = (psf_rng *)psf__calloc((size_t)v->cfg.batch, sizeof(psf_rng));
    if (!params || !rng) { PSF_FREE(params); PSF_FREE(rng); fclose(f); return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", path); }
    double width = 0;
    ok = ok && psf__rd(f, params, sizeof(psf_real), m->n_params) && psf__rd(f, &width, sizeof(double), 1) &&
         psf__rd(f, params + m->n_params, sizeof(psf_real), nx) && psf__rd(f, rng, sizeof(psf_rng), (size_t)v->cfg.batch) &&
         psf__rd(f, opt_name, 1, sizeof opt_name);
    if (ok && strncmp(opt_name, psf__opt(v)->name, sizeof opt_name) != 0) {
        PSF_FREE(params); PSF_FREE(rng); fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: field 'optimizer state' is for '%.15s', this run uses '%s'", path, opt_name, psf__opt(v)->name);
    }
    /* values no run writes (a checksum guards against corruption, not against a file crafted with a valid one) */
    const char *bad = NULL;
    if (ok && step < 0) bad = "step";
    else if (ok && !(width > 0 && width < 1e300)) bad = "proposal width";
    for (size_t i = 0; ok && !bad && i < m->n_params + nx; i++)
        if (!isfinite(params[i])) bad = i < m->n_params ? "parameters" : "walkers";
    if (bad) {
        PSF_FREE(params); PSF_FREE(rng); fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: field '%s' holds a value no run writes (negative or not finite); nothing was loaded", path, bad);
    }
    /* the optimizer's state is read in place (its size follows from the header fields checked above), after a
     * copy of the current state is put aside in a temporary file, to be put back if the body proves bad */
    FILE *bak = ok ? tmpfile() : NULL;
    if (bak && !psf__opt(v)->save(v->opt_state, bak)) { fclose(bak); bak = NULL; }
    if (ok && !bak) {
        PSF_FREE(params); PSF_FREE(rng); fclose(f);
        return psf__fail(PSF_ERR_IO, "%s: cannot set the optimizer's current state aside (tmpfile); nothing was loaded", path);
    }
    ok = ok && psf__opt(v)->load(v->opt_state, f) && ftell(f) == size - 4;
    fclose(f);
    if (bak) {
        if (!ok) { rewind(bak); psf__opt(v)->load(v->opt_state, bak); }
        fclose(bak);
    }
    if (!ok) {
        PSF_FREE(params); PSF_FREE(rng);
        return psf__fail(PSF_ERR_FORMAT, "%s: the body (parameters, walkers or optimizer state) does not match its header", path);
    }
    memcpy(m->params, params, sizeof(psf_real) * m->n_params);
    memcpy(v->walkers.x, params + m->n_params, sizeof(psf_real) * nx);
    memcpy(v->walkers.rng, rng, sizeof(psf_rng) * (size_t)v->cfg.batch);
    v->walkers.width = width;
    PSF_FREE(params); PSF_FREE(rng);
    v->step = step;
    v->has_good = 0;
    v->n_rejected = 0; /* not in the file (see psf_vmc_load) */
    return psf__vmc_refresh(v, &v->walkers, &v->wf, v->wsp, v->n_ws);
}

/* ---- NumPy .npy ----------------------------------------------------------------------------------------- */
int psf_save_npy(const char *path, const double *data, int rows, int cols) {
    FILE *f = fopen(path, "wb");
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open for writing", path);
    char dict[128];
    int n = cols == 1 && rows >= 0 ? snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%d,), }", rows)
                                   : snprintf(dict, sizeof dict, "{'descr': '<f8', 'fortran_order': False, 'shape': (%d, %d), }", rows, cols);
    int total = 10 + n + 1, pad = (64 - total % 64) % 64;
    unsigned short hl = (unsigned short)(n + pad + 1);
    unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)(hl & 0xff), (unsigned char)(hl >> 8)};
    int ok = psf__wr(f, pre, 1, 10) && psf__wr(f, dict, 1, (size_t)n);
    for (int i = 0; i < pad && ok; i++) ok = fputc(' ', f) != EOF;
    ok = ok && fputc('\n', f) != EOF && psf__wr(f, data, sizeof(double), (size_t)rows * cols);
    if (fclose(f) != 0) ok = 0;
    return ok ? PSF_OK : psf__fail(PSF_ERR_IO, "%s: write failed", path);
}

int psf_load_npy(const char *path, double **data, int shape[2]) {
    FILE *f = fopen(path, "rb");
    if (!f) return psf__fail(PSF_ERR_IO, "%s: cannot open", path);
    unsigned char pre[10];
    char hdr[1024];
    if (!psf__rd(f, pre, 1, 10) || pre[0] != 0x93 || memcmp(pre + 1, "NUMPY", 5) != 0 || pre[6] != 1) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: not a version-1 .npy file", path);
    }
    size_t hl = (size_t)pre[8] | ((size_t)pre[9] << 8);
    if (hl >= sizeof hdr || !psf__rd(f, hdr, 1, hl)) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: bad header length", path); }
    hdr[hl] = 0;
    if (!strstr(hdr, "'descr': '<f8'")) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: field 'descr' must be '<f8' (float64)", path); }
    if (!strstr(hdr, "'fortran_order': False")) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: field 'fortran_order' must be False", path); }
    const char *s = strstr(hdr, "'shape': (");
    if (!s) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: no field 'shape'", path); }
    s += 10;
    long dim[3] = {1, 1, 1};
    int nd = 0; /* up to 2 dimensions: "()", "(r,)", "(r, c)" */
    while (*s == ' ') s++;
    while (*s != ')') {
        char *end;
        errno = 0;
        const long d = strtol(s, &end, 10);
        if (end == s || errno || d < 0 || d > INT_MAX || nd == 3) break;
        dim[nd++] = d;
        s = end;
        while (*s == ' ') s++;
        if (*s == ',') s++;
        while (*s == ' ') s++;
    }
    if (*s != ')') { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: unreadable field 'shape'", path); }
    if (nd > 2) { fclose(f); return psf__fail(PSF_ERR_FORMAT, "%s: field 'shape' has %d or more dimensions (1 or 2 are read)", path, nd); }
    const int r = (int)dim[0], c = nd == 2 ? (int)dim[1] : 1;
    /* the data must be in the file before anything is allocated for it (no size overflow: r, c < 2^31) */
    const long here = ftell(f);
    long end_pos = -1;
    if (here >= 0 && fseek(f, 0, SEEK_END) == 0) end_pos = ftell(f);
    if (end_pos < 0 || fseek(f, here, SEEK_SET) != 0) { fclose(f); return psf__fail(PSF_ERR_IO, "%s: cannot seek", path); }
    if ((unsigned long long)(end_pos - here) / sizeof(double) < (unsigned long long)r * (unsigned long long)c) {
        fclose(f);
        return psf__fail(PSF_ERR_FORMAT, "%s: data shorter than shape (%d, %d)", path, r, c);
    }
    *data = (double *)psf__calloc(psf__add(psf__mul((size_t)r, (size_t)c), 1), sizeof(double));
    if (!*data) { fclose(f); return psf__fail(PSF_ERR_NOMEM, "%s: out of memory", path); }
    if (!psf__rd(f, *data, sizeof(double), (size_t)r * c)) {
        fclose(f); PSF_FREE(*data); *data = NULL;
        return psf__fail(PSF_ERR_FORMAT, "%s: data shorter than shape (%d, %d)", path, r, c);
    }
    fclose(f);
    shape[0] = r; shape[1] = c;
    return PSF_OK;
}

/* ============================================================================================================
 *  [IMPL: TESTS] the internal test API (PSF_INTERNAL_TESTS): named entry points into the implementation for
 *  tests/ and bench/, so that they call no psf__ function directly.
 * ============================================================================================================ */
#ifdef PSF_INTERNAL_TESTS
void psf_test_sample_and_measure(psf_vmc *v, psf_step_stats *st) { psf__sample_and_measure(v, st, 1); }
int psf_test_energy_gradient(psf_vmc *v, double mean) { return psf__energy_gradient(v, mean); }
double *psf_test_optimizer_state(psf_vmc *v, int i, size_t *n, long *counter) {
    double *a[2];
    size_t k[2];
    long *c;
    psf__opt(v)->state(v->opt_state, a, k, &c);
    *n = k[i];
    *counter = c ? *c : -1;
    return a[i];
}
int psf_test_optimizer_update(psf_vmc *v, int n_walkers, double *step_size) {
    return psf__opt(v)->update(v, v->opt_state, n_walkers, step_size);
}
int psf_test_lu(int n, psf_real *a, int *piv, double *logabs) { return psf__lu(n, a, piv, logabs); }
int psf_test_gram_f32(int m, int n, size_t K, const float *A, const float *B, double *C, int upper) {
    float *Ap = (float *)psf__calloc(psf__mul(K, (size_t)PSF__PANELS(m) * PSF__GNR), sizeof(float));
    float *Bp = (float *)psf__calloc(psf__mul(K, (size_t)PSF__PANELS(n) * PSF__GNR), sizeof(float));
    if (!Ap || !Bp) { PSF_FREE(Ap); PSF_FREE(Bp); return -1; }
    double *x = (double *)psf__calloc(K ? K : 1, sizeof(double));
    if (!x) { PSF_FREE(Ap); PSF_FREE(Bp); return -1; }
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < (t ? n : m); i++) {
            const float *row = (t ? B : A) + (size_t)i * K;
            for (size_t k = 0; k < K; k++) x[k] = row[k];
            psf__panel_row((t ? Bp : Ap) + (size_t)(i / PSF__GNR) * PSF__GNR * K, i % PSF__GNR, x, 0, (int)K);
        }
    psf__gram_f32(m, n, K, Ap, Bp, C, n, upper);
    PSF_FREE(Ap); PSF_FREE(Bp); PSF_FREE(x);
    return 0;
}
void psf_test_vexp(const double *x, double *y, size_t n) { psf__vexpd(x, y, n); }
void psf_test_vtanh(const double *x, double *y, size_t n) { psf__vtanhd(x, y, n); }
void psf_test_gemm(int ta, int tb, int M, int N, int K, double alpha, const psf_real *A, int lda, const psf_real *B,
                   int ldb, double beta, psf_real *C, int ldc) {
    psf__gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
void psf_test_lu_inverse(int n, const psf_real *lu, const int *piv, psf_real *inv) { psf__lu_inverse(n, lu, piv, inv); }
int psf_test_cholesky(int n, double *a) { return psf__cholesky(n, a); }
int psf_test_reference_matrix(const psf_reference *ref, const psf_real *x, double *phi, double *val) {
    return psf__reference_matrix(ref, x, phi, val);
}
int psf_test_kfac(const psf_vmc *v, psf_test_kfac_info *out) {
    const psf_kfac *k = v->cfg.optimizer == PSF_OPT_KFAC ? (const psf_kfac *)v->opt_state : NULL;
    if (!k) return 0;
    out->n_dense = k->n_dense; out->dense = k->dense; out->ema = k->ema; out->is_dense = k->is_dense;
    out->stat_reals = k->stat_reals; out->diag_off = k->diag_off;
    out->last_eta = k->last_eta; out->last_q = k->last_q; out->delta = k->delta;
    return 1;
}
uint32_t psf_test_crc32(const unsigned char *p, size_t n) { return psf__crc32(0, p, n); }
void psf_test_checkpoint_offsets(long *step, long *params) {
    *step = 8 + 4 * PSF__CKPT_NFIELDS + 8;
    *params = *step + 8 + (long)sizeof(double) * 4 * PSF_MAX_ATOMS;
}
int psf_test_spring(const psf_vmc *v, psf_test_spring_info *out) {
    const psf__spring *s = v->cfg.optimizer == PSF_OPT_SPRING ? (const psf__spring *)v->opt_state : NULL;
    if (!s) return 0;
    out->B = s->B; out->P = s->P; out->G = s->G; out->Gf = s->Gf; out->valid = s->valid; out->phi = s->phi;
    out->lambda_used = s->lambda_used; out->n_raised = s->n_raised;
    return 1;
}
double psf_test_kfac_precondition(int rows, int cols, const double *A, const double *S, double lambda,
                                  const psf_real *G, double *Delta, double *work) {
    return psf__kfac_precondition_dense(rows, cols, A, S, lambda, G, Delta, work);
}
double psf_test_pfaffian_inverse(int n, const psf_real *A, psf_real *work, int *perm, psf_real *inv, int *sign) {
    return psf__pfaffian_inverse(n, A, work, perm, inv, sign);
}
int psf_test_op_model(psf_model *m, const psf_system *sys, int op, uint64_t seed) {
    static int (*const examples[PSF_OP_COUNT])(psf_model *, int) = {
#define PSF__OP_EXAMPLE(ID, name) psf__##name##_example,
        PSF_OPS(PSF__OP_EXAMPLE)
#undef PSF__OP_EXAMPLE
    };
    int rc = psf__model_begin(m, sys);
    if (rc) return rc;
    if (op < 0 || op >= PSF_OP_COUNT) return psf__fail(PSF_ERR_ARG, "psf_test_op_model: op %d outside the registry", op);
    psf_config_default(&m->cfg);
    const int x = psf__node(m, PSF_OP_INPUT, -1, -1, m->n_elec, 3);
    m->out_node = m->logdet_node = m->orbital_node = examples[op](m, x);
    psf__layout(m);
    return psf__init_params(m, seed);
}
void psf_test_reference_pair_matrix(int N, const double *phi, double *tgt) { psf__reference_pair_matrix(N, phi, tgt); }
int psf_test_max_threads(void) { return psf__max_threads(); }
int psf_test_thread_id(void) { return psf__thread_id(); }
#endif

#endif /* PSIFORMER_IMPLEMENTATION */
