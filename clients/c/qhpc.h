/*
 * qhpc.h: the C client of a qhpc broker, for compiled codes (C, C++, Fortran through
 * ISO_C_BINDING) that use the QPU session of their Slurm job.
 *
 * A job submitted with `sbatch --qpu=NAME` gets its session through the environment
 * (qhpc's TaskProlog sets QHPC_URL, QHPC_SESSION_ID, QHPC_SESSION and QHPC_RESOURCE).
 * The library reads them, submits OpenQASM 2/3 (or cQASM) circuits as tasks of that
 * session over the broker's REST API (HTTP or HTTPS, JSON), waits for them and hands
 * back the counts:
 *
 *     qhpc_error err;
 *     qhpc_session *qpu = qhpc_session_from_env(&err);
 *     if (!qpu) { fprintf(stderr, "%s\n", err.message); return 1; }
 *     qhpc_task *task;
 *     if (qhpc_run_qasm(qpu, BELL, 1000, 600.0, &task) != QHPC_OK) {
 *         fprintf(stderr, "%s\n", qhpc_last_error(qpu));
 *     } else {
 *         size_t n; const char *const *bits; const uint64_t *counts;
 *         qhpc_counts(task, 0, &n, &bits, &counts);
 *         for (size_t i = 0; i < n; i++) printf("%s %llu\n", bits[i],
 *                                                (unsigned long long)counts[i]);
 *     }
 *     qhpc_task_free(task);
 *     qhpc_session_close(qpu);
 *
 * Build against it: `cc prog.c -I<qhpc>/clients/c -L<dir> -lqhpc` (examples/c/).
 *
 * Errors. Every call that can fail returns a qhpc_status; QHPC_OK is 0. The text of
 * the last failure on a session is qhpc_last_error(); it names the problem (and, for a
 * refused circuit, carries the broker's own explanation with line and column) and
 * never contains the session token. Calls made before there is a session (opening
 * one) report through a qhpc_error the caller passes (NULL is allowed).
 *
 * Threads. A session handle, with its tasks, belongs to one thread at a time: its
 * connection and its error text are not locked. Separate handles (open the same
 * session twice if need be) may be used from separate threads at once. The library's
 * one-time global set-up is thread-safe.
 *
 * Lifetimes. qhpc_session_close() releases the handle only; the session itself
 * belongs to the Slurm job and is closed by the job's epilog. Tasks keep their session
 * handle's memory alive, so tasks and session may be freed in either order; a task
 * whose session handle was closed can still be read (counts) but not waited on.
 *
 * Limits. Every request has a time limit (connect 10 s; a wait at most 60 s per
 * round trip, repeated up to the caller's timeout); answers over 64 MiB are refused;
 * redirects are not followed (the token goes only where QHPC_URL says); HTTPS peers
 * and host names are always verified against the system's CA store.
 */
#ifndef QHPC_H
#define QHPC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define QHPC_API __attribute__((visibility("default")))
#else
#define QHPC_API
#endif

/* Outcomes of the library's calls. */
typedef enum qhpc_status {
    QHPC_OK = 0,
    QHPC_E_ENV = 1,       /* no session in the environment, or a malformed QHPC_* value */
    QHPC_E_AUTH = 2,      /* the broker refused the token (unknown, another session's) */
    QHPC_E_CLOSED = 3,    /* the session is closed or past its deadline (the job ended) */
    QHPC_E_INPUT = 4,     /* the broker refused the circuit or the shots: its reason */
    QHPC_E_BUSY = 5,      /* the broker cannot take it now (503, 429, stopping): retry */
    QHPC_E_TIMEOUT = 6,   /* the wait ended before the task did; it goes on: wait again */
    QHPC_E_NETWORK = 7,   /* the broker could not be reached, or the connection failed */
    QHPC_E_PROTOCOL = 8,  /* an answer this client does not understand (or a 500) */
    QHPC_E_NOMEM = 9,     /* out of memory */
    QHPC_E_TASK = 10,     /* the task ran and failed: the broker's reason */
    QHPC_E_CANCELLED = 11, /* the task was cancelled (session closed, or an operator) */
    QHPC_E_ARG = 12       /* a caller's mistake: NULL, shots < 1, counts of an open task */
} qhpc_status;

/* Longest error text, terminating NUL included (longer texts are cut). */
#define QHPC_MESSAGE_MAX 512

/* Where a call without a session (opening one) reports why it failed. */
typedef struct qhpc_error {
    qhpc_status code;
    char message[QHPC_MESSAGE_MAX];
} qhpc_error;

typedef struct qhpc_session qhpc_session;
typedef struct qhpc_task qhpc_task;

/*
 * The session of this job, from its environment: QHPC_URL (the broker, http:// or
 * https://), QHPC_SESSION_ID and QHPC_SESSION (the session token), and QHPC_RESOURCE
 * (the QPU's name, optional). NULL on failure, with err->code QHPC_E_ENV (a variable
 * missing or malformed; the message names it) or QHPC_E_NOMEM. Nothing is sent to
 * the broker yet: a wrong token shows at the first submission (QHPC_E_AUTH).
 */
QHPC_API qhpc_session *qhpc_session_from_env(qhpc_error *err);

/*
 * The session on QPU `qpu` of a job holding several (`sbatch --qpu=a,b`): its token
 * and id come from QHPC_SESSION_<QPU> and QHPC_SESSION_ID_<QPU> (QPU in capitals,
 * other characters than letters and digits as '_'), or from the plain names when
 * `qpu` is QHPC_RESOURCE. QRMI_JOB_QPU_RESOURCES lists the job's QPUs.
 */
QHPC_API qhpc_session *qhpc_session_from_env_for(const char *qpu, qhpc_error *err);

/*
 * A session named explicitly: the broker's URL, the session's id, and a file holding
 * its token (a regular file of at most 4 KiB; surrounding white space is ignored).
 * Tokens travel in files or the environment, never in a program's arguments.
 */
QHPC_API qhpc_session *qhpc_session_open(const char *url, const char *session_id,
                                         const char *token_file, qhpc_error *err);

/* Release the handle (connection, memory, the token's copy, wiped); NULL is fine. */
QHPC_API void qhpc_session_close(qhpc_session *session);

QHPC_API const char *qhpc_session_id(const qhpc_session *session);
/* The QPU's name from the environment, or "" if it was not given. */
QHPC_API const char *qhpc_session_resource(const qhpc_session *session);
/* The text of the session's last failure ("" if none yet); valid until the next call. */
QHPC_API const char *qhpc_last_error(const qhpc_session *session);
/* The code of the session's last failure (QHPC_OK if none yet). */
QHPC_API qhpc_status qhpc_last_status(const qhpc_session *session);

/*
 * Queue one task of `shots` shots per circuit: one circuit (qhpc_submit_qasm), or
 * `n` circuits as one task (qhpc_submit_qasm_batch; counts per circuit, in order).
 * On QHPC_OK *out is a new task (free it with qhpc_task_free); otherwise *out is NULL.
 * QHPC_E_INPUT carries the broker's reason (e.g. "invalid OpenQASM 2 circuit at line
 * 3, column 1: ..."); QHPC_E_CLOSED means the session is over: submit nothing more.
 */
QHPC_API qhpc_status qhpc_submit_qasm(qhpc_session *session, const char *qasm, long shots,
                                      qhpc_task **out);
QHPC_API qhpc_status qhpc_submit_qasm_batch(qhpc_session *session, const char *const *qasm,
                                            size_t n, long shots, qhpc_task **out);

/*
 * Wait up to `timeout_s` seconds (0: just look) for the task to end. QHPC_OK: it
 * completed and its counts are ready. QHPC_E_TIMEOUT: still queued or running (wait
 * again). QHPC_E_TASK / QHPC_E_CANCELLED: it ended without counts (the reason is the
 * session's last error). Waiting again on an ended task answers the same at once.
 */
QHPC_API qhpc_status qhpc_wait(qhpc_task *task, double timeout_s);

/* Submit and wait in one call; *out is set as by qhpc_submit_qasm (free it). */
QHPC_API qhpc_status qhpc_run_qasm(qhpc_session *session, const char *qasm, long shots,
                                   double timeout_s, qhpc_task **out);

QHPC_API const char *qhpc_task_id(const qhpc_task *task);
/* How many circuits the task's result holds (0 until it has completed). */
QHPC_API size_t qhpc_task_circuits(const qhpc_task *task);

/*
 * The counts of circuit `circuit` of a completed task: *n outcomes, bitstrings in
 * ascending order (Qiskit's order: the last classical bit first) and their counts.
 * The arrays belong to the task and live until qhpc_task_free.
 */
QHPC_API qhpc_status qhpc_counts(const qhpc_task *task, size_t circuit, size_t *n,
                                 const char *const **bitstrings, const uint64_t **counts);

/* Free a task (NULL is fine). A task still queued at the broker goes on running there. */
QHPC_API void qhpc_task_free(qhpc_task *task);

/* A short constant text for a status, e.g. "session closed" for QHPC_E_CLOSED. */
QHPC_API const char *qhpc_strerror(qhpc_status code);

#ifdef __cplusplus
}
#endif

#endif /* QHPC_H */
