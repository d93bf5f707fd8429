/* impl.c — the one translation unit that holds psiformer.h's implementation (stb style). */
#define PSIFORMER_IMPLEMENTATION
#include <psiformer.h>
