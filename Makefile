# psiformer.h — build, run, test.   make run | make test | make OPENMP=0 test | make BLAS=1 ... | make install
# | make consumer-check | make plot RUN=runs/carbon
CC      ?= cc
OPENMP  ?= 1
# OpenBLAS (Debian: libopenblas-dev) is used for the large products (SPRING's kernel, KFAC's factors) and for
# LAPACK's Cholesky (dpotrf) when a program using cblas.h and dpotrf_ links with -lopenblas here; BLAS=0 forces
# the built-in product and Cholesky everywhere, BLAS=1 insists on OpenBLAS.
BLAS    ?= $(shell printf '\043include <cblas.h>\nvoid dpotrf_(const char *, const int *, double *, const int *, int *);\nint main(void) { int n = 0, info; cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, 1, 1, 1.0, 0, 1, 0, 1, 0.0, 0, 1); dpotrf_("U", &n, 0, &n, &info); return 0; }\n' | $(CC) -x c - -lopenblas -o /dev/null 2>/dev/null && echo 1 || echo 0)
CFLAGS  ?= -O3 -march=native
CFLAGS  += -std=c11 -Wall -Wextra -Wno-unknown-pragmas -I.
LDLIBS  += -lm
ifeq ($(OPENMP),1)
CFLAGS  += -fopenmp
endif
ifeq ($(BLAS),1)
CFLAGS  += -DPSF_USE_CBLAS
LDLIBS  += -lopenblas
endif

# MPI=1: build with mpicc (Debian: openmpi-bin libopenmpi-dev) and PSF_USE_MPI into build/mpi/; the driver then
# splits the walkers over the ranks of `mpirun -np R build/mpi/psiformer ...` with the same bits as one process.
MPI     ?= 0
ifeq ($(MPI),1)
CC      := mpicc
CFLAGS  += -DPSF_USE_MPI
endif

# FLOAT=1: the network in float32 (PSF_REAL float: parameters, walkers, the tape, its jet and backward pass; the
# optimizers' state, the log-determinant's sums and the energies stay double) into build/f32/: `make FLOAT=1 run`.
# docs/results.md (round 12) measures it against the double default. `make test` always builds the double suite,
# and checks the float build against it (tests/real_check.c).
FLOAT   ?= 0
ifeq ($(FLOAT),1)
CFLAGS  += -DPSF_REAL=float
endif

# SAN: extra compiler flags appended last (`make sanitize` sets them); empty by default.
SAN     ?=
CFLAGS  += $(SAN)

# OpenMP threads sleep instead of spinning while they wait (a shared or busy machine otherwise loses much time)
export OMP_WAIT_POLICY ?= passive

BUILD   := build$(if $(filter 1,$(MPI)),/mpi)$(if $(filter 1,$(FLOAT)),/f32)
# `make run` trains carbon for a fixed wall-time budget: 11 minutes of training whatever the machine's speed, with
# 400 Hartree-Fock pretraining steps before and 300 evaluation steps after, so it finishes in about 13 minutes on
# any 2-core machine (docs/results.md justifies the configuration). `--steps N` instead of `--steps 0` gives the
# bitwise-reproducible fixed-step form.
RUN_ARGS ?= --atom C --out runs/carbon --steps 0 --train-minutes 11

.PHONY: all run test clean
# (the test suite is written for the double build: `make FLOAT=1` builds the programs, `make FLOAT=1 test` the
# double suite, which checks the float build through tests/real_check.c)
all: $(BUILD)/psiformer $(BUILD)/helium $(if $(filter 1,$(FLOAT)),,$(BUILD)/test_psiformer)

$(BUILD):
	mkdir -p $(BUILD)

$(BUILD)/psiformer: examples/psiformer.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/helium: examples/helium.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/test_psiformer: tests/test_psiformer.c tests/psf_harness.h tests/gemm_check.h psiformer.h $(BUILD)/psiformer $(BUILD)/real_check $(BUILD)/real_check_f32 | $(BUILD)
	$(CC) $(CFLAGS) -DPSF_TEST_DRIVER='"$(BUILD)/psiformer"' -DPSF_TEST_REAL_CHECK='"$(BUILD)/real_check"' -o $@ $< $(LDLIBS)

# one carbon Psiformer evaluated by the double and the float build (test float_build_agrees_with_double)
$(BUILD)/real_check: tests/real_check.c tests/gemm_check.h psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)
$(BUILD)/real_check_f32: tests/real_check.c tests/gemm_check.h psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -DPSF_REAL=float -o $@ $< $(LDLIBS)

run: $(BUILD)/psiformer
	./$(BUILD)/psiformer $(RUN_ARGS)

# `make plot RUN=runs/carbon`: RUN/training.png from the plot.gp the driver wrote there (gnuplot 5.4; Debian:
# gnuplot-nox). The driver does this itself at the end of a run when gnuplot is installed; this target redraws a
# finished run, or one that is still training.
RUN ?= runs/carbon
.PHONY: plot
plot:
	@test -f '$(RUN)/plot.gp' || { echo "make plot: $(RUN)/plot.gp not found (build/psiformer writes it into its --out directory at the end of a run)"; exit 1; }
	@command -v gnuplot >/dev/null || { echo "make plot: gnuplot not found (Debian: apt-get install gnuplot-nox)"; exit 1; }
	cd '$(RUN)' && gnuplot plot.gp
	@echo "make plot: $(RUN)/training.png"

ifeq ($(FLOAT),1)
test:
	$(MAKE) --no-print-directory FLOAT=0 test
else
test: $(BUILD)/test_psiformer
	./$(BUILD)/test_psiformer
endif

# `make sanitize`: the whole test suite (and the driver it runs) built with AddressSanitizer (leaks included) and
# UndefinedBehaviorSanitizer at -O1 -g; any report fails it. `make OPENMP=0 sanitize` for the serial build.
SAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
.PHONY: sanitize
sanitize:
	$(MAKE) --no-print-directory BUILD=$(BUILD)/san$(if $(filter 0,$(OPENMP)),-serial) SAN="$(SAN_FLAGS)" test

# `make fuzz FUZZ_SECONDS=N`: every parser (.npy, checkpoint, XYZ) under libFuzzer with ASan + UBSan (Debian's clang), N seconds each,
# starting from a scratch copy of its seed corpus in tests/corpus/; a crash, a leak or a report fails it and
# leaves the input in $(BUILD)/fuzz/ (crash-*). Each crash found so far is a regression test in `make test`.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 30
FUZZ_TARGETS  = fuzz_npy fuzz_checkpoint fuzz_xyz fuzz_molden
FUZZ_FLAGS    = -std=c11 -g -O1 -I. -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
.PHONY: fuzz
$(BUILD)/fuzz/%: tests/fuzz/%.c psiformer.h
	@mkdir -p $(BUILD)/fuzz
	@command -v $(FUZZ_CC) >/dev/null || { echo "make fuzz: $(FUZZ_CC) not found (Debian: apt-get install clang libclang-rt-14-dev)"; exit 1; }
	$(FUZZ_CC) $(FUZZ_FLAGS) -o $@ $< -lm
fuzz: $(addprefix $(BUILD)/fuzz/,$(FUZZ_TARGETS))
	@for t in $(FUZZ_TARGETS); do \
	    name=$${t#fuzz_}; work=$(BUILD)/fuzz/corpus-$$name; rm -rf $$work; mkdir -p $$work; \
	    cp tests/corpus/$$name/* $$work/; \
	    echo "== $$t: $(FUZZ_SECONDS) s from tests/corpus/$$name"; \
	    (cd $(BUILD)/fuzz && ./$$t -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 corpus-$$name >$$t.log 2>&1); rc=$$?; \
	    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' $(BUILD)/fuzz/$$t.log; \
	    if [ $$rc -ne 0 ]; then tail -n 40 $(BUILD)/fuzz/$$t.log; echo "make fuzz: $$t failed (log: $(BUILD)/fuzz/$$t.log)"; exit 1; fi; \
	done

clean:
	rm -rf $(BUILD)

# `make mpi-check` (issue 13): 1 process (the plain build and the MPI build) against 2 MPI ranks x 1 thread, for
# He and Li with KFAC, Adam and SPRING: bitwise-identical energies, variances and training curves; and a checkpoint
# written by 2 ranks restored on 1 continues identically. Needs openmpi-bin and libopenmpi-dev.
.PHONY: mpi-check
mpi-check:
	$(MAKE) --no-print-directory MPI=0 build/psiformer
	$(MAKE) --no-print-directory MPI=1 build/mpi/psiformer
	sh tests/mpi_check.sh build/psiformer build/mpi/psiformer build/mpi-check

# `make crosscheck`: the C numbers against the independent PyTorch reference (bench/reference/, issue 4).
# Needs Debian's python3-torch and python3-numpy (PYTHON=/usr/bin/python3 by default).
.PHONY: crosscheck
$(BUILD)/export: bench/reference/export.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

crosscheck: $(BUILD)/export
	sh bench/reference/crosscheck.sh $(BUILD)/export $(BUILD)/crosscheck

# `make bench` (issue 4; bench/README.md): walkers/s for log|psi|, E_L and a training iteration, GFLOP/s against
# the FP64 peak, thread scaling, OpenBLAS on / off and the PyTorch reference. BENCH_QUICK=1: < 1 minute.
# With BLAS=1 the bench is built twice (built-in loops: bench; OpenBLAS: bench_blas). Timings are never asserted.
.PHONY: bench
BENCH_CFLAGS = $(filter-out -DPSF_USE_CBLAS,$(CFLAGS))
BENCH_LDLIBS = $(filter-out -lopenblas,$(LDLIBS))
BENCH_BINS   = $(BUILD)/bench $(BUILD)/bench_f32 $(BUILD)/export $(BUILD)/bench_peak
ifeq ($(BLAS),1)
BENCH_BINS  += $(BUILD)/bench_blas
PEAK_DEFS    = -DPEAK_DGEMM
PEAK_LIBS    = -lopenblas
endif
$(BUILD)/bench: bench/bench.c psiformer.h | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDLIBS)

$(BUILD)/bench_blas: bench/bench.c psiformer.h | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -DPSF_USE_CBLAS -o $@ $< $(BENCH_LDLIBS) -lopenblas

# the float build (PSF_REAL float; the built-in products, which are all it uses with Adam): C in float32 against
# PyTorch in float32
$(BUILD)/bench_f32: bench/bench.c psiformer.h | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -DPSF_REAL=float -o $@ $< $(BENCH_LDLIBS)

# the FMA-loop peaks (float64, float32) always; OpenBLAS's dgemm rate too when BLAS=1
$(BUILD)/bench_peak: bench/peak.c | $(BUILD)
	$(CC) $(BENCH_CFLAGS) $(PEAK_DEFS) -o $@ $< $(PEAK_LIBS) $(BENCH_LDLIBS)

bench: $(BENCH_BINS)
	BENCH_BLAS=$(BLAS) sh bench/run.sh $(BUILD)

# What MPI moves and costs, and FermiNet's carbon protocol projected on 8-512 nodes (docs/scaling.md): build/mpi_scaling
$(BUILD)/mpi_scaling: bench/mpi_scaling.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# KFAC cost beside the jet pass, for three widths (carbon, batch 256): build/kfac_cost [iterations]
$(BUILD)/kfac_cost: bench/kfac_cost.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

# `make install PREFIX=/usr/local DESTDIR=`: the header, pkg-config files and a CMake package (README, "Using it
# from another project"). PREFIX is written into psiformer.pc; DESTDIR only stages the files (packaging).
#   include/psiformer.h
#   lib/pkgconfig/psiformer.pc             -I<prefix>/include, -lm
#   lib/pkgconfig/psiformer-openmp.pc      + -fopenmp          (pkg-config ... psiformer-openmp)
#   lib/pkgconfig/psiformer-openblas.pc    + -DPSF_USE_CBLAS, -lopenblas
#   lib/cmake/psiformer/psiformerConfig.cmake, psiformerConfigVersion.cmake: psiformer::psiformer (INTERFACE),
#                                          psiformer::openblas
PREFIX  ?= /usr/local
DESTDIR ?=
VERSION  = $(shell sed -n 's/^\#define PSF_VERSION "\(.*\)"/\1/p' psiformer.h)
PC_FILES    = psiformer.pc psiformer-openmp.pc psiformer-openblas.pc
CMAKE_FILES = psiformerConfig.cmake psiformerConfigVersion.cmake
SUBST       = sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g'
.PHONY: install uninstall consumer-check
install:
	install -d '$(DESTDIR)$(PREFIX)/include' '$(DESTDIR)$(PREFIX)/lib/pkgconfig' '$(DESTDIR)$(PREFIX)/lib/cmake/psiformer'
	install -m 644 psiformer.h '$(DESTDIR)$(PREFIX)/include/psiformer.h'
	for f in $(PC_FILES); do $(SUBST) packaging/$$f.in > '$(DESTDIR)$(PREFIX)/lib/pkgconfig/'$$f || exit 1; done
	for f in $(CMAKE_FILES); do $(SUBST) packaging/$$f.in > '$(DESTDIR)$(PREFIX)/lib/cmake/psiformer/'$$f || exit 1; done
	chmod 644 $(addprefix '$(DESTDIR)$(PREFIX)/lib/pkgconfig/',$(PC_FILES)) $(addprefix '$(DESTDIR)$(PREFIX)/lib/cmake/psiformer/',$(CMAKE_FILES))

uninstall:
	rm -f '$(DESTDIR)$(PREFIX)/include/psiformer.h' $(addprefix '$(DESTDIR)$(PREFIX)/lib/pkgconfig/',$(PC_FILES)) \
	    $(addprefix '$(DESTDIR)$(PREFIX)/lib/cmake/psiformer/',$(CMAKE_FILES))
	rmdir '$(DESTDIR)$(PREFIX)/lib/cmake/psiformer' 2>/dev/null || true

# `make consumer-check`: installs into a temporary prefix and builds tests/consumer/ from the installed files with
# pkg-config (C99, C11, OpenMP, OpenBLAS when BLAS=1), CMake find_package(psiformer) and g++ -std=c++17, runs each
# program, compiles the implementation with gcc and clang -Wall -Wextra -Werror, then checks DESTDIR and
# uninstall (tests/consumer/check.sh). Needs pkg-config, cmake, g++ and clang.
consumer-check:
	@CC='$(CC)' CXX='$(CXX)' BLAS='$(BLAS)' MAKE='$(MAKE)' sh tests/consumer/check.sh

# `make bench-pfaffian` (issue 9): psf_logpfaffian against psf_logdet on the same skew matrix, orders 4..64, median
# per call, with the CPU model; one thread, timings never asserted. PF_BENCH_ARGS passes options, e.g.
# PF_BENCH_ARGS="--samples 3 --target-us 100" for a quick look (bench/pfaffian_speed.c lists them).
.PHONY: bench-pfaffian
PF_BENCH_ARGS ?=
$(BUILD)/pfaffian_speed: bench/pfaffian_speed.c psiformer.h | $(BUILD)
	$(CC) $(BENCH_CFLAGS) -o $@ $< $(BENCH_LDLIBS)
bench-pfaffian: $(BUILD)/pfaffian_speed
	./$(BUILD)/pfaffian_speed $(PF_BENCH_ARGS)

# `make molden-check` (issue 10, item 2): psi4's UHF orbitals (tools/hf_orbitals.sh, Molden files) for LiH, N2 and
# OH; VMC of each bare determinant read by psiformer.h reproduces psi4's SCF energy within 3 error bars; psi4's H2O
# orbitals in cc-pVTZ (spherical and cartesian d, f) stay orthonormal (tests/molden_check.sh). Needs Debian's psi4.
.PHONY: molden-check
$(BUILD)/molden_check: tests/molden_check.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

$(BUILD)/molden_overlap: tests/molden_overlap.c psiformer.h | $(BUILD)
	$(CC) $(CFLAGS) -o $@ $< $(LDLIBS)

molden-check: $(BUILD)/molden_check $(BUILD)/molden_overlap
	sh tests/molden_check.sh $(BUILD)
