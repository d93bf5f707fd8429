/* main.c — a C program using the installed psiformer.h (its implementation is in impl.c). */
#include <psiformer.h>
#include "checks.h"

int main(void) { return consumer_run("C") ? 1 : 0; }
