#!/bin/sh
# tests/consumer/check.sh — `make consumer-check`: psiformer.h used the way a project that depends on it uses it.
#
#   1. make install PREFIX=<temporary prefix>: the header, the pkg-config files, the CMake package
#   2. the consumer (main.c + impl.c, main.cpp) built from the installed files with
#        cc $(pkg-config --cflags --libs psiformer ...)   as C99 and C11, with OpenMP, with OpenBLAS (BLAS=1)
#        CMake find_package(psiformer)                    C99, C++17, OpenMP (if found), OpenBLAS (BLAS=1)
#        g++ -std=c++17                                   the implementation compiled as C++; and C++ calling
#                                                         an implementation compiled as C (extern "C")
#      and every program run (each checks a few numbers and prints one line);
#   3. the implementation compiled with gcc and clang -Wall -Wextra -Werror (C99 -pedantic, C11, OpenMP);
#   4. make install DESTDIR=<stage> PREFIX=/usr, then make uninstall of both: nothing is left behind.
#
# Needs pkg-config, cmake, g++ and clang (Debian: apt-get install pkg-config cmake g++ clang). Environment:
# CC (default cc), CXX (default g++), BLAS (1: also the OpenBLAS builds), MAKE. Exit status 0 iff all passed.
set -eu

root=$(cd "$(dirname "$0")/../.." && pwd)
CC=${CC:-cc}
CXX=${CXX:-g++}
BLAS=${BLAS:-0}
MAKE=${MAKE:-make}
W="-O2 -Wall -Wextra -Werror"

for tool in pkg-config:pkg-config cmake:cmake "$CXX":g++ clang:clang gcc:gcc; do
    if ! command -v "${tool%%:*}" >/dev/null 2>&1; then
        echo "consumer-check: ${tool%%:*} not found (Debian: apt-get install ${tool#*:})"
        exit 1
    fi
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix
src=$tmp/src
bin=$tmp/bin
mkdir -p "$bin"
cp -R "$root/tests/consumer" "$src" # built away from the repository, so only the installed header can be found
cd "$src"

# run WHAT COMMAND...: runs it quietly; on failure prints what failed, the command and its output, and exits.
run() {
    what=$1
    shift
    if ! "$@" >"$tmp/out" 2>&1; then
        echo "consumer-check: FAILED: $what"
        echo "  command: $*"
        sed 's/^/  | /' "$tmp/out"
        exit 1
    fi
}
# program NAME: runs a built consumer; it prints its own "consumer (...): ok" line.
program() {
    if ! "$1" >"$tmp/out" 2>&1; then
        echo "consumer-check: FAILED: $1 reported:"
        sed 's/^/  | /' "$tmp/out"
        exit 1
    fi
    printf '  %-38s %s\n' "$2" "$(cat "$tmp/out")"
}

# ---- 1. install
run "make install PREFIX=$prefix" $MAKE -s -C "$root" install PREFIX="$prefix"
for f in include/psiformer.h lib/pkgconfig/psiformer.pc lib/pkgconfig/psiformer-openmp.pc \
         lib/pkgconfig/psiformer-openblas.pc lib/cmake/psiformer/psiformerConfig.cmake \
         lib/cmake/psiformer/psiformerConfigVersion.cmake; do
    [ -f "$prefix/$f" ] || { echo "consumer-check: FAILED: make install did not write $f"; exit 1; }
done
echo "consumer-check: make install PREFIX=<tmp> wrote include/, lib/pkgconfig/, lib/cmake/psiformer/"

# ---- 2a. pkg-config
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
version=$(sed -n 's/^#define PSF_VERSION "\(.*\)"/\1/p' "$root/psiformer.h")
got=$(pkg-config --modversion psiformer)
[ "$got" = "$version" ] || { echo "consumer-check: FAILED: pkg-config --modversion psiformer gave '$got', not '$version'"; exit 1; }
flags=$(pkg-config --cflags --libs psiformer)
[ "$(echo $flags)" = "-I$prefix/include -lm" ] || { echo "consumer-check: FAILED: pkg-config --cflags --libs psiformer gave '$flags'"; exit 1; }
echo "consumer-check: pkg-config: psiformer $got, '$(echo $flags)'"
pc() { pkg-config --cflags --libs "$@"; }
# shellcheck disable=SC2046 # word splitting of pkg-config's output is intended
run "cc -std=c99 with pkg-config" $CC -std=c99 -pedantic $W main.c impl.c $(pc psiformer) -o "$bin/pc_c99"
program "$bin/pc_c99" "cc -std=c99 -pedantic, pkg-config"
run "cc -std=c11 with pkg-config" $CC -std=c11 $W main.c impl.c $(pc psiformer) -o "$bin/pc_c11"
program "$bin/pc_c11" "cc -std=c11, pkg-config"
run "cc with psiformer-openmp" $CC -std=c99 $W main.c impl.c $(pc psiformer-openmp) -o "$bin/pc_omp"
program "$bin/pc_omp" "cc, pkg-config psiformer-openmp"
if [ "$BLAS" = 1 ]; then
    run "cc with psiformer-openblas" $CC -std=c11 $W main.c impl.c $(pc psiformer-openmp psiformer-openblas) -o "$bin/pc_blas"
    program "$bin/pc_blas" "cc, + psiformer-openblas"
fi

# ---- 2b. CMake
run "cmake configure (find_package(psiformer))" cmake -S "$src" -B "$tmp/cmake" -DCMAKE_PREFIX_PATH="$prefix" \
    -DCMAKE_C_COMPILER="$CC" -DCMAKE_CXX_COMPILER="$CXX" -DCONSUMER_OPENBLAS="$([ "$BLAS" = 1 ] && echo ON || echo OFF)"
run "cmake --build" cmake --build "$tmp/cmake"
for t in consumer_c consumer_cxx consumer_openmp consumer_openblas; do
    if [ -x "$tmp/cmake/$t" ]; then program "$tmp/cmake/$t" "cmake find_package: $t"; fi
done
[ -x "$tmp/cmake/consumer_c" ] && [ -x "$tmp/cmake/consumer_cxx" ] || { echo "consumer-check: FAILED: CMake built no consumer_c / consumer_cxx"; exit 1; }

# ---- 2c. C++17
run "$CXX -std=c++17 (implementation compiled as C++)" $CXX -std=c++17 -pedantic $W main.cpp $(pc psiformer) -o "$bin/cxx"
program "$bin/cxx" "$CXX -std=c++17, implementation C++"
run "impl.c as C" $CC -std=c99 $W $(pkg-config --cflags psiformer) -c impl.c -o "$tmp/impl.o"
run "$CXX -std=c++17 (declarations only)" $CXX -std=c++17 $W -DCONSUMER_IMPL_IN_C $(pkg-config --cflags psiformer) -c main.cpp -o "$tmp/main.o"
run "link C++ with the C implementation" $CXX "$tmp/main.o" "$tmp/impl.o" $(pkg-config --libs psiformer) -o "$bin/cxx_c"
program "$bin/cxx_c" "$CXX -std=c++17 + C implementation"

# ---- 3. the implementation under both compilers' warnings
inc=$(pkg-config --cflags psiformer)
for cc in gcc clang; do
    run "$cc -std=c99 -pedantic $W" $cc -std=c99 -pedantic $W $inc -c impl.c -o /dev/null
    run "$cc -std=c11 $W" $cc -std=c11 $W $inc -c impl.c -o /dev/null
    if echo '#include <omp.h>' | $cc -fopenmp -E -x c - >/dev/null 2>&1; then
        run "$cc -std=c11 -fopenmp $W" $cc -std=c11 -fopenmp $W $inc -c impl.c -o /dev/null
        omp=", -fopenmp"
    else
        omp=" (no omp.h for $cc -fopenmp: skipped)"
    fi
    echo "consumer-check: $cc $W: implementation clean as -std=c99 -pedantic, -std=c11$omp"
done

# ---- 4. DESTDIR staging and uninstall
run "make install DESTDIR" $MAKE -s -C "$root" install DESTDIR="$tmp/stage" PREFIX=/usr
[ -f "$tmp/stage/usr/include/psiformer.h" ] && grep -q '^prefix=/usr$' "$tmp/stage/usr/lib/pkgconfig/psiformer.pc" ||
    { echo "consumer-check: FAILED: make install DESTDIR=<stage> PREFIX=/usr did not stage /usr"; exit 1; }
run "make uninstall DESTDIR" $MAKE -s -C "$root" uninstall DESTDIR="$tmp/stage" PREFIX=/usr
run "make uninstall" $MAKE -s -C "$root" uninstall PREFIX="$prefix"
left=$(find "$tmp/stage" "$prefix" -type f | sed "s|^$tmp/||")
[ -z "$left" ] || { echo "consumer-check: FAILED: make uninstall left:"; echo "$left"; exit 1; }
echo "consumer-check: make install DESTDIR=<stage> PREFIX=/usr staged /usr; make uninstall removed every file"
echo "consumer-check: all passed"
