/*
 * probe.c: the C client's calls that the examples do not reach, one scenario per run
 * (tests/cclient/test_cclient.py drives it; ASan builds catch what goes wrong in memory).
 *
 *   probe batch | lifetimes | timeout | args
 *   probe for QPU            the session of one QPU of a job holding several
 *   probe tokenfile URL ID FILE
 *
 * Prints "name status [detail]" lines; exits with the first unexpected qhpc_status.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qhpc.h"

static const char BELL[] = "OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\ncreg c[2];\n"
                           "h q[0];\ncx q[0], q[1];\nmeasure q -> c;\n";
static const char ONE[] = "OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[1] q;\nbit[1] c;\n"
                          "x q[0];\nc = measure q;\n";

static void show(const char *name, qhpc_status status, const qhpc_session *s)
{
    printf("%s %s %s\n", name, qhpc_strerror(status), s ? qhpc_last_error(s) : "");
}

static void counts_line(const char *name, const qhpc_task *task, size_t circuit)
{
    size_t n;
    const char *const *bits;
    const uint64_t *counts;
    qhpc_status status = qhpc_counts(task, circuit, &n, &bits, &counts);
    printf("%s %s", name, qhpc_strerror(status));
    for (size_t i = 0; status == QHPC_OK && i < n; i++) {
        printf(" %s=%llu", bits[i], (unsigned long long)counts[i]);
    }
    printf("\n");
}

static qhpc_session *session_or_exit(qhpc_session *s, const qhpc_error *err)
{
    if (s == NULL) {
        printf("open %s %s\n", qhpc_strerror(err->code), err->message);
        exit((int)err->code);
    }
    return s;
}

static int batch(qhpc_session *s)
{
    const char *circuits[2] = {BELL, ONE};
    qhpc_task *task = NULL;
    qhpc_status status = qhpc_submit_qasm_batch(s, circuits, 2, 300, &task);
    show("submit", status, s);
    if (status == QHPC_OK) {
        status = qhpc_wait(task, 120.0);
        show("wait", status, s);
        printf("circuits %zu\n", qhpc_task_circuits(task));
        counts_line("counts0", task, 0);
        counts_line("counts1", task, 1);
        counts_line("counts2", task, 2); /* no such circuit */
    }
    qhpc_task_free(task);
    return (int)status;
}

static int lifetimes(qhpc_session *s)
{
    qhpc_task *first = NULL, *second = NULL;
    qhpc_status status = qhpc_submit_qasm(s, BELL, 50, &first);
    show("submit", status, s);
    if (status != QHPC_OK) {
        return (int)status;
    }
    counts_line("early", first, 0); /* not waited on yet */
    show("wait", qhpc_wait(first, 120.0), s);
    show("again", qhpc_wait(first, 0.0), s); /* an ended task answers at once */
    status = qhpc_submit_qasm(s, BELL, 50, &second);
    show("submit2", status, s);
    qhpc_session_close(s); /* tasks keep what they need */
    counts_line("after_close", first, 0);
    printf("wait_after_close %s\n", qhpc_strerror(qhpc_wait(second, 1.0)));
    qhpc_task_free(second);
    qhpc_task_free(first);
    qhpc_session_close(NULL);
    qhpc_task_free(NULL);
    return 0;
}

static int timeout(qhpc_session *s)
{
    qhpc_task *task = NULL;
    qhpc_status status = qhpc_submit_qasm(s, BELL, 10000, &task); /* ~2 s on the emulator */
    show("submit", status, s);
    if (status == QHPC_OK) {
        show("look", qhpc_wait(task, 0.0), s);
        counts_line("open", task, 0);
        status = qhpc_wait(task, 120.0);
        show("wait", status, s);
        counts_line("counts", task, 0);
    }
    qhpc_task_free(task);
    return (int)status;
}

static int args(qhpc_session *s)
{
    qhpc_task *task = (qhpc_task *)&task; /* must be reset to NULL on failure */
    show("null_qasm", qhpc_submit_qasm(s, NULL, 10, &task), s);
    printf("task_reset %s\n", task == NULL ? "yes" : "no");
    show("empty_qasm", qhpc_submit_qasm(s, "", 10, &task), s);
    show("zero_shots", qhpc_submit_qasm(s, BELL, 0, &task), s);
    show("too_many_shots", qhpc_submit_qasm(s, BELL, 2000000000L, &task), s);
    show("no_out", qhpc_submit_qasm(s, BELL, 10, NULL), s);
    show("no_circuits", qhpc_submit_qasm_batch(s, NULL, 0, 10, &task), s);
    show("not_utf8", qhpc_submit_qasm(s, "OPENQASM 2.0; \xff\xfe", 10, &task), s);
    show("huge_shots_broker", qhpc_submit_qasm(s, BELL, 1000000000L, &task), s);
    qhpc_task_free(task);
    task = NULL;
    printf("wait_null %s\n", qhpc_strerror(qhpc_wait(NULL, 1.0)));
    printf("counts_null %s\n", qhpc_strerror(qhpc_counts(NULL, 0, NULL, NULL, NULL)));
    printf("last_null %s|%s\n", qhpc_last_error(NULL), qhpc_strerror(qhpc_last_status(NULL)));
    printf("strerror %s|%s\n", qhpc_strerror(QHPC_E_CLOSED), qhpc_strerror((qhpc_status)99));
    qhpc_error err;
    qhpc_session *none = qhpc_session_from_env_for("", &err);
    printf("for_empty %s %s\n", none ? "session" : "null", qhpc_strerror(err.code));
    none = qhpc_session_open(NULL, "x", "/nonexistent", &err);
    printf("open_null %s %s\n", none ? "session" : "null", qhpc_strerror(err.code));
    none = qhpc_session_open("http://127.0.0.1:1", "abc", "/nonexistent/token", &err);
    printf("open_missing_file %s %s %s\n", none ? "session" : "null", qhpc_strerror(err.code),
           err.message);
    none = qhpc_session_open("http://127.0.0.1:1", "abc", "/", &err);
    printf("open_directory %s %s %s\n", none ? "session" : "null", qhpc_strerror(err.code),
           err.message);
    /* still usable after all that */
    qhpc_status status = qhpc_run_qasm(s, BELL, 20, 120.0, &task);
    show("still_works", status, s);
    qhpc_task_free(task);
    return (int)status;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: probe batch|lifetimes|timeout|args|for QPU|tokenfile URL ID FILE\n");
        return 64;
    }
    qhpc_error err;
    int code;
    if (strcmp(argv[1], "tokenfile") == 0 && argc == 5) {
        qhpc_session *s = session_or_exit(qhpc_session_open(argv[2], argv[3], argv[4], &err), &err);
        qhpc_task *task = NULL;
        qhpc_status status = qhpc_run_qasm(s, BELL, 40, 120.0, &task);
        show("run", status, s);
        counts_line("counts", task, 0);
        printf("resource '%s' session %s\n", qhpc_session_resource(s), qhpc_session_id(s));
        qhpc_task_free(task);
        qhpc_session_close(s);
        return (int)status;
    }
    if (strcmp(argv[1], "for") == 0 && argc == 3) {
        qhpc_session *s = session_or_exit(qhpc_session_from_env_for(argv[2], &err), &err);
        qhpc_task *task = NULL;
        qhpc_status status = qhpc_run_qasm(s, BELL, 30, 120.0, &task);
        show("run", status, s);
        printf("resource %s session %s\n", qhpc_session_resource(s), qhpc_session_id(s));
        qhpc_task_free(task);
        qhpc_session_close(s);
        return (int)status;
    }
    qhpc_session *s = session_or_exit(qhpc_session_from_env(&err), &err);
    if (strcmp(argv[1], "batch") == 0) {
        code = batch(s);
    } else if (strcmp(argv[1], "lifetimes") == 0) {
        return lifetimes(s); /* closes the session itself */
    } else if (strcmp(argv[1], "timeout") == 0) {
        code = timeout(s);
    } else if (strcmp(argv[1], "args") == 0) {
        code = args(s);
    } else {
        fprintf(stderr, "probe: unknown scenario %s\n", argv[1]);
        code = 64;
    }
    qhpc_session_close(s);
    return code;
}
