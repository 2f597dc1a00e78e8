/*
 * bell.c: a compiled program using its Slurm job's QPU session through libqhpc.
 *
 *   bell [SHOTS [CIRCUIT.qasm]]
 *
 * Runs a Bell pair (or the OpenQASM/cQASM circuit in CIRCUIT.qasm) SHOTS times (1000 by
 * default) on the job's QPU and prints one line per outcome ("00 512"), then the total.
 * On failure it prints the library's message and exits with the qhpc_status (1-12), so
 * a job script can tell a closed session (3) from a refused circuit (4).
 * Build: see examples/c/README.md; run in a job submitted with `sbatch --qpu=NAME`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "qhpc.h"

static const char BELL[] =
    "OPENQASM 2.0;\n"
    "include \"qelib1.inc\";\n"
    "qreg q[2];\n"
    "creg c[2];\n"
    "h q[0];\n"
    "cx q[0], q[1];\n"
    "measure q -> c;\n";

/* the whole file, NUL-terminated (at most 1 MiB), or NULL */
static char *read_file(const char *path)
{
    FILE *in = fopen(path, "rb");
    if (in == NULL) {
        return NULL;
    }
    size_t cap = 1 << 20;
    char *text = malloc(cap + 1);
    size_t got = text ? fread(text, 1, cap + 1, in) : 0;
    fclose(in);
    if (text == NULL || got > cap) {
        free(text);
        return NULL;
    }
    text[got] = '\0';
    return text;
}

int main(int argc, char **argv)
{
    long shots = argc > 1 ? strtol(argv[1], NULL, 10) : 1000;
    char *circuit = NULL;
    if (argc > 2 && (circuit = read_file(argv[2])) == NULL) {
        fprintf(stderr, "bell: cannot read %s (or it is over 1 MiB)\n", argv[2]);
        return 64;
    }
    qhpc_error err;
    qhpc_session *qpu = qhpc_session_from_env(&err);
    if (qpu == NULL) {
        fprintf(stderr, "bell: %s: %s\n", qhpc_strerror(err.code), err.message);
        free(circuit);
        return (int)err.code;
    }
    qhpc_task *task = NULL;
    qhpc_status status = qhpc_run_qasm(qpu, circuit ? circuit : BELL, shots, 600.0, &task);
    if (status == QHPC_OK) {
        size_t n;
        const char *const *bits;
        const uint64_t *counts;
        uint64_t total = 0;
        qhpc_counts(task, 0, &n, &bits, &counts);
        for (size_t i = 0; i < n; i++) {
            printf("%s %llu\n", bits[i], (unsigned long long)counts[i]);
            total += counts[i];
        }
        printf("shots %llu on %s (task %s)\n", (unsigned long long)total,
               qhpc_session_resource(qpu), qhpc_task_id(task));
    } else {
        fprintf(stderr, "bell: %s: %s\n", qhpc_strerror(status), qhpc_last_error(qpu));
    }
    qhpc_task_free(task);
    qhpc_session_close(qpu);
    free(circuit);
    return (int)status;
}
