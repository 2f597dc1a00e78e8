/*
 * qhpc.c: the public calls: sessions, tasks and their counts (the API reference is
 * qhpc.h). A task is one POST /v1/sessions/{id}/tasks with {"circuits": [...], "shots":
 * n}, the REST form of a session task (api/routes_sessions.py); waiting is repeated
 * GET /v1/tasks/{id}?wait=S, each held by the broker at most 60 s, until the caller's
 * timeout. REST + JSON rather than the ZeroMQ fast path: a C program then needs only
 * libcurl and Jansson, which every HPC distribution ships.
 */
#define _DEFAULT_SOURCE

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "internal.h"

/* the broker's own bounds (api/models.py): circuits per task, shots */
#define MAX_CIRCUITS 10000
#define MAX_SHOTS 1000000000L

typedef struct outcomes {
    size_t n;
    char **bits;
    uint64_t *counts;
} outcomes;

struct qhpc_task {
    qhpc_session *session;
    char *id;
    int ended;               /* final at the broker: `outcome` is the answer */
    qhpc_status outcome;
    char *reason;            /* why it ended without counts, to repeat on a later wait */
    size_t ncircuits;
    outcomes *circuits;
};

/* -- messages ------------------------------------------------------------------------ */

void qhpc_clean_copy(char *out, size_t size, const char *text)
{
    if (size == 0) {
        return;
    }
    size_t i = 0;
    for (; text[i] != '\0' && i + 1 < size; i++) {
        unsigned char c = (unsigned char)text[i];
        out[i] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    out[i] = '\0';
}

static void format_into(char *out, size_t size, const char *format, va_list args)
{
    int n = vsnprintf(out, size, format, args);
    if (n < 0) {
        snprintf(out, size, "(unformattable message)");
    }
}

qhpc_status qhpc_fail(qhpc_session *session, qhpc_status code, const char *format, ...)
{
    if (session != NULL) {
        va_list args;
        va_start(args, format);
        format_into(session->message, sizeof session->message, format, args);
        va_end(args);
        session->last = code;
    }
    return code;
}

qhpc_status qhpc_report(qhpc_error *err, qhpc_status code, const char *format, ...)
{
    if (err != NULL) {
        va_list args;
        va_start(args, format);
        format_into(err->message, sizeof err->message, format, args);
        va_end(args);
        err->code = code;
    }
    return code;
}

const char *qhpc_strerror(qhpc_status code)
{
    switch (code) {
    case QHPC_OK: return "ok";
    case QHPC_E_ENV: return "no usable session (environment or token file)";
    case QHPC_E_AUTH: return "session token refused";
    case QHPC_E_CLOSED: return "session closed";
    case QHPC_E_INPUT: return "circuit or shots refused";
    case QHPC_E_BUSY: return "broker busy, retry later";
    case QHPC_E_TIMEOUT: return "task not finished in time";
    case QHPC_E_NETWORK: return "broker unreachable";
    case QHPC_E_PROTOCOL: return "unexpected answer from the broker";
    case QHPC_E_NOMEM: return "out of memory";
    case QHPC_E_TASK: return "task failed";
    case QHPC_E_CANCELLED: return "task cancelled";
    case QHPC_E_ARG: return "invalid argument";
    }
    return "unknown qhpc status";
}

/* -- sessions ------------------------------------------------------------------------ */

static void release(qhpc_session *session)
{
    if (session != NULL && --session->refs == 0) {
        qhpc_free_session(session);
    }
}

void qhpc_session_close(qhpc_session *session)
{
    if (session == NULL || session->closed) {
        return;
    }
    session->closed = 1;
    if (session->curl != NULL) { /* the connection goes now, even while tasks live on */
        curl_easy_cleanup(session->curl);
        session->curl = NULL;
    }
    release(session);
}

const char *qhpc_session_id(const qhpc_session *session)
{
    return session ? session->session_id : "";
}

const char *qhpc_session_resource(const qhpc_session *session)
{
    return session ? session->resource : "";
}

const char *qhpc_last_error(const qhpc_session *session)
{
    return session ? session->message : "no session (NULL)";
}

qhpc_status qhpc_last_status(const qhpc_session *session)
{
    return session ? session->last : QHPC_E_ARG;
}

static int usable(qhpc_session *session)
{
    return session != NULL && !session->closed;
}

/* -- tasks --------------------------------------------------------------------------- */

static void free_outcomes(qhpc_task *task)
{
    for (size_t c = 0; c < task->ncircuits; c++) {
        for (size_t i = 0; i < task->circuits[c].n; i++) {
            free(task->circuits[c].bits[i]);
        }
        free(task->circuits[c].bits);
        free(task->circuits[c].counts);
    }
    free(task->circuits);
    task->circuits = NULL;
    task->ncircuits = 0;
}

void qhpc_task_free(qhpc_task *task)
{
    if (task == NULL) {
        return;
    }
    free_outcomes(task);
    free(task->id);
    free(task->reason);
    release(task->session);
    free(task);
}

const char *qhpc_task_id(const qhpc_task *task)
{
    return task ? task->id : "";
}

size_t qhpc_task_circuits(const qhpc_task *task)
{
    return task && task->ended && task->outcome == QHPC_OK ? task->ncircuits : 0;
}

/* a task id the broker sent, before it goes into a URL */
static int plain_task_id(const char *id)
{
    size_t len = strlen(id);
    if (len == 0 || len > QHPC_MAX_ID) {
        return 0;
    }
    for (const char *c = id; *c; c++) {
        if (!(isascii((unsigned char)*c) && (isalnum((unsigned char)*c) || *c == '_' || *c == '-'))) {
            return 0;
        }
    }
    return 1;
}

/* the JSON answer of a 2xx, or NULL with a protocol failure recorded */
static json_t *parse_answer(qhpc_session *session, const qhpc_answer *answer, const char *doing)
{
    json_error_t error;
    json_t *body = json_loadb(answer->body, answer->len, JSON_REJECT_DUPLICATES, &error);
    if (!json_is_object(body)) {
        json_decref(body);
        qhpc_fail(session, QHPC_E_PROTOCOL, "the broker's answer while %s is not a JSON object",
                  doing);
        return NULL;
    }
    return body;
}

qhpc_status qhpc_submit_qasm_batch(qhpc_session *session, const char *const *qasm, size_t n,
                                   long shots, qhpc_task **out)
{
    if (out != NULL) {
        *out = NULL;
    }
    if (!usable(session)) {
        return qhpc_fail(session, QHPC_E_ARG, "this session handle was closed");
    }
    if (out == NULL || qasm == NULL || n == 0 || n > MAX_CIRCUITS) {
        return qhpc_fail(session, QHPC_E_ARG, "submit needs 1 to %d circuits and a place for the "
                         "task (out)", MAX_CIRCUITS);
    }
    if (shots < 1 || shots > MAX_SHOTS) {
        return qhpc_fail(session, QHPC_E_ARG, "shots must be 1 to %ld, not %ld", MAX_SHOTS, shots);
    }
    json_t *circuits = json_array();
    json_t *body = json_object();
    if (circuits == NULL || body == NULL) {
        json_decref(circuits);
        json_decref(body);
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    qhpc_status code = QHPC_OK;
    for (size_t i = 0; i < n && code == QHPC_OK; i++) {
        if (qasm[i] == NULL || *qasm[i] == '\0') {
            code = qhpc_fail(session, QHPC_E_ARG, "circuit %zu is NULL or empty", i);
        } else {
            json_t *text = json_string(qasm[i]); /* NULL: not UTF-8 (or no memory) */
            if (text == NULL || json_array_append_new(circuits, text) != 0) {
                code = qhpc_fail(session, QHPC_E_INPUT, "circuit %zu is not valid UTF-8 text", i);
            }
        }
    }
    if (code == QHPC_OK && (json_object_set(body, "circuits", circuits) != 0 ||
                            json_object_set_new(body, "shots", json_integer(shots)) != 0)) {
        code = qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    json_decref(circuits);
    char *text = code == QHPC_OK ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (code != QHPC_OK) {
        return code;
    }
    if (text == NULL) {
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    char path[64 + QHPC_MAX_ID];
    snprintf(path, sizeof path, "/v1/sessions/%s/tasks", session->session_id);
    qhpc_answer answer;
    code = qhpc_request(session, "POST", path, text, 0.0, &answer);
    free(text);
    if (code != QHPC_OK) {
        return code;
    }
    if (answer.status != 201 && answer.status != 200) {
        code = qhpc_refusal(session, &answer, "submitting a task");
        free(answer.body);
        return code;
    }
    json_t *created = parse_answer(session, &answer, "submitting a task");
    free(answer.body);
    if (created == NULL) {
        return QHPC_E_PROTOCOL;
    }
    const char *id = json_string_value(json_object_get(created, "task_id"));
    if (id == NULL || !plain_task_id(id)) {
        json_decref(created);
        return qhpc_fail(session, QHPC_E_PROTOCOL, "the broker's answer names no usable task id");
    }
    qhpc_task *task = calloc(1, sizeof *task);
    char *copy = strdup(id);
    json_decref(created);
    if (task == NULL || copy == NULL) {
        free(task);
        free(copy);
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    task->id = copy;
    task->session = session;
    session->refs++;
    *out = task;
    session->last = QHPC_OK;
    session->message[0] = '\0';
    return QHPC_OK;
}

qhpc_status qhpc_submit_qasm(qhpc_session *session, const char *qasm, long shots, qhpc_task **out)
{
    const char *one[1] = {qasm};
    return qhpc_submit_qasm_batch(session, one, 1, shots, out);
}

/* -- results ------------------------------------------------------------------------- */

typedef struct outcome {
    char *bits;
    uint64_t count;
} outcome;

static int by_bits(const void *a, const void *b)
{
    return strcmp(((const outcome *)a)->bits, ((const outcome *)b)->bits);
}

/* one circuit's counts object into `into`, sorted by bitstring */
static qhpc_status read_counts(qhpc_session *session, json_t *counts, outcomes *into)
{
    size_t n = json_object_size(counts);
    outcome *read = calloc(n ? n : 1, sizeof *read);
    into->n = 0;
    into->bits = calloc(n ? n : 1, sizeof *into->bits);
    into->counts = calloc(n ? n : 1, sizeof *into->counts);
    if (read == NULL || into->bits == NULL || into->counts == NULL) {
        free(read);
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    qhpc_status code = QHPC_OK;
    const char *key;
    json_t *value;
    size_t i = 0;
    json_object_foreach(counts, key, value) {
        if (i == n) {
            break;
        }
        if (!json_is_integer(value) || json_integer_value(value) < 0) {
            code = qhpc_fail(session, QHPC_E_PROTOCOL,
                             "a count in the result is not a whole number >= 0");
            break;
        }
        read[i].bits = strdup(key);
        if (read[i].bits == NULL) {
            code = qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
            break;
        }
        read[i].count = (uint64_t)json_integer_value(value);
        i++;
    }
    if (code == QHPC_OK) {
        qsort(read, i, sizeof *read, by_bits);
    }
    for (size_t k = 0; k < i; k++) { /* handed over; freed with the task, also on failure */
        into->bits[k] = read[k].bits;
        into->counts[k] = read[k].count;
    }
    into->n = i;
    free(read);
    return code;
}

static qhpc_status read_result(qhpc_task *task, json_t *result)
{
    qhpc_session *session = task->session;
    const char *kind = json_string_value(json_object_get(result, "kind"));
    json_t *circuits = json_object_get(result, "circuits");
    if (kind == NULL || strcmp(kind, "sampler") != 0 || !json_is_array(circuits) ||
        json_array_size(circuits) > MAX_CIRCUITS) {
        return qhpc_fail(session, QHPC_E_PROTOCOL, "task %s's result is not a sampler result",
                         task->id);
    }
    size_t n = json_array_size(circuits);
    task->circuits = calloc(n ? n : 1, sizeof *task->circuits);
    if (task->circuits == NULL) {
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    for (size_t c = 0; c < n; c++) {
        json_t *counts = json_object_get(json_array_get(circuits, c), "counts");
        if (!json_is_object(counts)) {
            free_outcomes(task);
            return qhpc_fail(session, QHPC_E_PROTOCOL, "circuit %zu of task %s has no counts", c,
                             task->id);
        }
        task->ncircuits = c + 1; /* so that free_outcomes frees what is read so far */
        qhpc_status code = read_counts(session, counts, &task->circuits[c]);
        if (code != QHPC_OK) {
            free_outcomes(task);
            return code;
        }
    }
    task->ncircuits = n;
    return QHPC_OK;
}

/* the task's final state read from its detail; QHPC_E_TIMEOUT while it is open */
static qhpc_status settle(qhpc_task *task, json_t *detail)
{
    qhpc_session *session = task->session;
    const char *state = json_string_value(json_object_get(detail, "state"));
    const char *error = json_string_value(json_object_get(detail, "error"));
    char reason[QHPC_MESSAGE_MAX / 2];
    qhpc_clean_copy(reason, sizeof reason, error ? error : "no reason given");
    if (state == NULL) {
        return qhpc_fail(session, QHPC_E_PROTOCOL, "the broker's answer gives task %s no state",
                         task->id);
    }
    qhpc_status code;
    if (strcmp(state, "completed") == 0) {
        json_t *result = json_object_get(detail, "result");
        if (!json_is_object(result)) {
            return qhpc_fail(session, QHPC_E_PROTOCOL, "completed task %s came without a result",
                             task->id);
        }
        code = read_result(task, result);
        if (code == QHPC_E_NOMEM) {
            return code; /* not final: waiting again may fare better */
        }
    } else if (strcmp(state, "failed") == 0) {
        code = qhpc_fail(session, QHPC_E_TASK, "task %s failed: %s", task->id, reason);
    } else if (strcmp(state, "cancelled") == 0) {
        code = qhpc_fail(session, QHPC_E_CANCELLED,
                         "task %s was cancelled (its session closed, or an operator cancelled "
                         "it): %s", task->id, reason);
    } else if (strcmp(state, "queued") == 0 || strcmp(state, "running") == 0) {
        return QHPC_E_TIMEOUT;
    } else {
        return qhpc_fail(session, QHPC_E_PROTOCOL, "task %s is in an unknown state", task->id);
    }
    task->ended = 1;
    task->outcome = code;
    if (code != QHPC_OK) {
        task->reason = strdup(session->message); /* NULL (no memory): the status alone */
    }
    return code;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

qhpc_status qhpc_wait(qhpc_task *task, double timeout_s)
{
    if (task == NULL) {
        return QHPC_E_ARG;
    }
    qhpc_session *session = task->session;
    if (task->ended) {
        if (task->outcome != QHPC_OK && !session->closed) {
            qhpc_fail(session, task->outcome, "%s",
                      task->reason ? task->reason : qhpc_strerror(task->outcome));
        }
        return task->outcome;
    }
    if (session->closed) {
        return QHPC_E_ARG; /* no handle left to report on, nor to ask with */
    }
    if (!(timeout_s >= 0.0)) { /* negative or NaN */
        timeout_s = 0.0;
    }
    double deadline = now_s() + timeout_s;
    for (;;) {
        double remaining = deadline - now_s();
        double wait = remaining < 0.0 ? 0.0 : remaining > QHPC_MAX_WAIT_S ? QHPC_MAX_WAIT_S
                                                                           : remaining;
        char path[64 + QHPC_MAX_ID];
        snprintf(path, sizeof path, "/v1/tasks/%s?wait=%.3f", task->id, floor(wait * 1000.0) / 1000.0);
        qhpc_answer answer;
        qhpc_status code = qhpc_request(session, "GET", path, NULL, wait, &answer);
        if (code != QHPC_OK) {
            return code;
        }
        if (answer.status != 200) {
            code = qhpc_refusal(session, &answer, "waiting for a task");
            free(answer.body);
            return code;
        }
        json_t *detail = parse_answer(session, &answer, "waiting for a task");
        free(answer.body);
        if (detail == NULL) {
            return QHPC_E_PROTOCOL;
        }
        code = settle(task, detail);
        json_decref(detail);
        if (code != QHPC_E_TIMEOUT) {
            if (code == QHPC_OK) {
                session->last = QHPC_OK;
                session->message[0] = '\0';
            }
            return code;
        }
        if (now_s() >= deadline) {
            return qhpc_fail(session, QHPC_E_TIMEOUT, "task %s has not ended within %.1f s; it "
                             "goes on: wait again", task->id, timeout_s);
        }
    }
}

qhpc_status qhpc_run_qasm(qhpc_session *session, const char *qasm, long shots, double timeout_s,
                          qhpc_task **out)
{
    qhpc_status code = qhpc_submit_qasm(session, qasm, shots, out);
    return code == QHPC_OK ? qhpc_wait(*out, timeout_s) : code;
}

qhpc_status qhpc_counts(const qhpc_task *task, size_t circuit, size_t *n,
                        const char *const **bitstrings, const uint64_t **counts)
{
    if (task == NULL || n == NULL || bitstrings == NULL || counts == NULL) {
        return QHPC_E_ARG;
    }
    *n = 0;
    *bitstrings = NULL;
    *counts = NULL;
    if (!task->ended || task->outcome != QHPC_OK || circuit >= task->ncircuits) {
        if (!task->session->closed) {
            qhpc_fail(task->session, QHPC_E_ARG, "task %s has no counts for circuit %zu (%s)",
                      task->id, circuit, task->ended && task->outcome == QHPC_OK
                          ? "no such circuit" : "it has not completed: qhpc_wait first");
        }
        return QHPC_E_ARG;
    }
    *n = task->circuits[circuit].n;
    *bitstrings = (const char *const *)task->circuits[circuit].bits;
    *counts = task->circuits[circuit].counts;
    return QHPC_OK;
}
