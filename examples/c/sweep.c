/*
 * sweep.c: the shape of a sample-based hybrid code (SQD and its kind) in C: a classical
 * loop that hands batches of circuits to the job's QPU and post-processes the counts.
 *
 *   sweep [POINTS [SHOTS [ROUNDS]]]
 *
 * Each round submits POINTS circuits RY(theta) |0> for theta evenly spread over
 * [0, pi] (all of them queued before the first wait, so the QPU is never idle waiting
 * for the classical side), then estimates <Z> = P(0) - P(1) from each one's counts and
 * compares it with the exact cos(theta). The next round narrows the interval around
 * the best point, as an optimiser would. Prints one line per point and, last,
 * "max_error E minimum_theta T". Exit status: the qhpc_status of a failure, else 0.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qhpc.h"

#define MAX_POINTS 64

static double z_of(const qhpc_task *task)
{
    size_t n;
    const char *const *bits;
    const uint64_t *counts;
    double zero = 0, one = 0;
    if (qhpc_counts(task, 0, &n, &bits, &counts) != QHPC_OK) {
        return NAN;
    }
    for (size_t i = 0; i < n; i++) {
        if (strcmp(bits[i], "0") == 0) {
            zero += (double)counts[i];
        } else {
            one += (double)counts[i];
        }
    }
    return (zero - one) / (zero + one);
}

int main(int argc, char **argv)
{
    int points = argc > 1 ? atoi(argv[1]) : 5;
    long shots = argc > 2 ? strtol(argv[2], NULL, 10) : 2000;
    int rounds = argc > 3 ? atoi(argv[3]) : 2;
    if (points < 2 || points > MAX_POINTS || rounds < 1) {
        fprintf(stderr, "sweep: POINTS must be 2-%d and ROUNDS at least 1\n", MAX_POINTS);
        return 64;
    }
    qhpc_error err;
    qhpc_session *qpu = qhpc_session_from_env(&err);
    if (qpu == NULL) {
        fprintf(stderr, "sweep: %s\n", err.message);
        return (int)err.code;
    }
    const double pi = acos(-1.0);
    double low = 0.0, high = pi, best = 0.0, best_z = 2.0, max_error = 0.0;
    qhpc_status status = QHPC_OK;
    for (int round = 0; round < rounds && status == QHPC_OK; round++) {
        qhpc_task *tasks[MAX_POINTS] = {0};
        double theta[MAX_POINTS];
        for (int k = 0; k < points && status == QHPC_OK; k++) {
            char qasm[256];
            theta[k] = low + (high - low) * k / (points - 1);
            snprintf(qasm, sizeof qasm,
                     "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[1];\ncreg c[1];\n"
                     "ry(%.17g) q[0];\nmeasure q -> c;\n", theta[k]);
            status = qhpc_submit_qasm(qpu, qasm, shots, &tasks[k]);
        }
        for (int k = 0; k < points && status == QHPC_OK; k++) {
            status = qhpc_wait(tasks[k], 600.0);
            if (status != QHPC_OK) {
                break;
            }
            double z = z_of(tasks[k]);
            double error = fabs(z - cos(theta[k]));
            max_error = error > max_error ? error : max_error;
            if (z < best_z) {
                best_z = z;
                best = theta[k];
            }
            printf("round %d theta %.4f z %.4f exact %.4f\n", round, theta[k], z, cos(theta[k]));
        }
        for (int k = 0; k < points; k++) {
            qhpc_task_free(tasks[k]);
        }
        double width = (high - low) / 4;
        low = best - width > 0 ? best - width : 0;
        high = best + width < pi ? best + width : pi;
    }
    if (status != QHPC_OK) {
        fprintf(stderr, "sweep: %s: %s\n", qhpc_strerror(status), qhpc_last_error(qpu));
    } else {
        printf("max_error %.4f minimum_theta %.4f\n", max_error, best);
    }
    qhpc_session_close(qpu);
    return (int)status;
}
