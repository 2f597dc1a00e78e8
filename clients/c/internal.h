/*
 * internal.h: what the library's three parts share (not installed, not part of the API).
 *
 *   env.c    where a session comes from: the job's environment or a token file
 *   http.c   one request to the broker (libcurl) and the broker's refusals as statuses
 *   qhpc.c   sessions, tasks, results (the public calls)
 */
#ifndef QHPC_INTERNAL_H
#define QHPC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>

#include <curl/curl.h>

#include "qhpc.h"

#define QHPC_HIDDEN __attribute__((visibility("hidden")))

/* an answer larger than this is refused (a result of many distinct outcomes is a few MiB) */
#define QHPC_MAX_ANSWER_BYTES ((size_t)64 << 20)
/* the longest a broker holds one GET /tasks/{id}?wait= (its MAX_WAIT_SECONDS) */
#define QHPC_MAX_WAIT_S 60.0
/* connecting, and the slack on top of a request's own wait */
#define QHPC_CONNECT_TIMEOUT_S 10L
#define QHPC_REQUEST_SLACK_S 30.0
/* longest accepted QHPC_URL, session id, token */
#define QHPC_MAX_URL 2048
#define QHPC_MAX_ID 128
#define QHPC_MAX_TOKEN 200

struct qhpc_session {
    CURL *curl;           /* one connection, kept alive between requests */
    char *url;            /* the broker, without a trailing '/' */
    char *session_id;
    char *resource;       /* "" when unknown */
    char *token;          /* wiped before it is freed */
    size_t refs;          /* the handle itself, plus one per live task */
    int closed;           /* qhpc_session_close was called: no more requests */
    qhpc_status last;
    char message[QHPC_MESSAGE_MAX];
};

/* the broker's answer to one request */
typedef struct qhpc_answer {
    long status;  /* HTTP status */
    char *body;   /* NUL-terminated (the NUL not counted in len); free() it */
    size_t len;
} qhpc_answer;

/* env.c: a new handle (refs 1, no connection yet) from checked values; NULL + err;
 * `labels` name where the URL, the id and the token came from, for the messages */
QHPC_HIDDEN qhpc_session *qhpc_new_session(const char *url, const char *session_id,
                                           const char *token, const char *resource,
                                           const char *const labels[3], qhpc_error *err);
QHPC_HIDDEN void qhpc_free_session(qhpc_session *session);

/* qhpc.c: record a failure on a session or in an error struct; returns `code` */
QHPC_HIDDEN qhpc_status qhpc_fail(qhpc_session *session, qhpc_status code, const char *format,
                                  ...) __attribute__((format(printf, 3, 4)));
QHPC_HIDDEN qhpc_status qhpc_report(qhpc_error *err, qhpc_status code, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* copy text a remote party sent, cut to `size`, control characters as '?' */
QHPC_HIDDEN void qhpc_clean_copy(char *out, size_t size, const char *text);

/* http.c */
QHPC_HIDDEN qhpc_status qhpc_global_init(void);
/* method "GET" or "POST" (with a JSON body); path below the URL, e.g. "/v1/tasks/ID" */
QHPC_HIDDEN qhpc_status qhpc_request(qhpc_session *session, const char *method, const char *path,
                                     const char *json_body, double wait_s, qhpc_answer *answer);
/* a non-2xx answer as a status and message; `doing` says what was asked ("submitting") */
QHPC_HIDDEN qhpc_status qhpc_refusal(qhpc_session *session, const qhpc_answer *answer,
                                     const char *doing);

#endif /* QHPC_INTERNAL_H */
