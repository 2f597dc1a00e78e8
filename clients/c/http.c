/*
 * http.c: one request to the broker, through libcurl, and the broker's refusals as
 * statuses. The broker answers every error as an RFC 9457 problem body (type, title,
 * status, detail; api/problems.py); the problem type, not the wording, tells a closed
 * session (token-revoked, token-expired, session-closed) from a wrong token.
 *
 * Bounds: a connect timeout, a whole-request timeout (the request's own wait plus
 * slack), an answer size cap, http/https only, no redirects (the token must not follow
 * one), TLS peer and host verification on. The token is only ever in the Authorization
 * header, which is wiped after each request; libcurl's verbose mode is never turned on.
 */
#define _DEFAULT_SOURCE

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "internal.h"

#define PROBLEM_PREFIX "urn:qhpc:problem:"
#define USER_AGENT "qhpc-c/1"

static pthread_once_t init_once = PTHREAD_ONCE_INIT;
static CURLcode init_result = CURLE_FAILED_INIT;

static void init_curl(void)
{
    init_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

qhpc_status qhpc_global_init(void)
{
    pthread_once(&init_once, init_curl);
    return init_result == CURLE_OK ? QHPC_OK : QHPC_E_NETWORK;
}

typedef struct sink {
    char *data;
    size_t len;
    size_t cap;
    int too_large;
} sink;

static size_t collect(char *chunk, size_t size, size_t count, void *user)
{
    sink *into = user;
    size_t n = size * count;
    if (n > QHPC_MAX_ANSWER_BYTES - into->len) {
        into->too_large = 1;
        return 0; /* libcurl stops the transfer */
    }
    if (into->len + n + 1 > into->cap) {
        size_t cap = into->cap ? into->cap : 4096;
        while (cap < into->len + n + 1) {
            cap *= 2;
        }
        char *grown = realloc(into->data, cap);
        if (grown == NULL) {
            return 0;
        }
        into->data = grown;
        into->cap = cap;
    }
    memcpy(into->data + into->len, chunk, n);
    into->len += n;
    into->data[into->len] = '\0';
    return n;
}

static void wipe_headers(struct curl_slist *headers)
{
    for (struct curl_slist *h = headers; h != NULL; h = h->next) {
        explicit_bzero(h->data, strlen(h->data));
    }
    curl_slist_free_all(headers);
}

static qhpc_status prepare(qhpc_session *session)
{
    if (session->curl == NULL) {
        session->curl = curl_easy_init();
        if (session->curl == NULL) {
            return qhpc_fail(session, QHPC_E_NOMEM, "libcurl could not make a handle");
        }
    }
    CURL *curl = session->curl;
    curl_easy_reset(curl);
    int failed = 0;
    failed |= curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L) != CURLE_OK;
#if LIBCURL_VERSION_NUM >= 0x075500
    failed |= curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK;
#else
    failed |= curl_easy_setopt(curl, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS))
              != CURLE_OK;
#endif
    failed |= curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, QHPC_CONNECT_TIMEOUT_S) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_USERAGENT, USER_AGENT) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, collect) != CURLE_OK;
    if (failed) {
        return qhpc_fail(session, QHPC_E_NETWORK, "libcurl refused an option this client needs");
    }
    return QHPC_OK;
}

qhpc_status qhpc_request(qhpc_session *session, const char *method, const char *path,
                         const char *json_body, double wait_s, qhpc_answer *answer)
{
    answer->status = 0;
    answer->body = NULL;
    answer->len = 0;
    qhpc_status ready = prepare(session);
    if (ready != QHPC_OK) {
        return ready;
    }
    size_t url_len = strlen(session->url) + strlen(path) + 1;
    char *url = malloc(url_len);
    size_t auth_len = strlen("Authorization: Bearer ") + strlen(session->token) + 1;
    char *auth = malloc(auth_len);
    if (url == NULL || auth == NULL) {
        free(url);
        free(auth);
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    snprintf(url, url_len, "%s%s", session->url, path);
    snprintf(auth, auth_len, "Authorization: Bearer %s", session->token);
    struct curl_slist *headers = NULL;
    struct curl_slist *next = NULL;
    const char *lines[] = {auth, "Accept: application/json, application/problem+json",
                           json_body ? "Content-Type: application/json" : NULL};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0] && lines[i] != NULL; i++) {
        next = curl_slist_append(headers, lines[i]);
        if (next == NULL) {
            break;
        }
        headers = next;
    }
    explicit_bzero(auth, auth_len);
    free(auth);
    if (next == NULL) {
        wipe_headers(headers);
        free(url);
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    sink into = {0};
    char curl_error[CURL_ERROR_SIZE] = "";
    long timeout_ms = (long)((wait_s + QHPC_REQUEST_SLACK_S) * 1000.0);
    CURL *curl = session->curl;
    int failed = 0;
    failed |= curl_easy_setopt(curl, CURLOPT_URL, url) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_WRITEDATA, &into) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, curl_error) != CURLE_OK;
    failed |= curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout_ms) != CURLE_OK;
    if (strcmp(method, "POST") == 0) {
        failed |= curl_easy_setopt(curl, CURLOPT_POSTFIELDS, json_body ? json_body : "") != CURLE_OK;
    } else {
        failed |= curl_easy_setopt(curl, CURLOPT_HTTPGET, 1L) != CURLE_OK;
    }
    CURLcode done = failed ? CURLE_FAILED_INIT : curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    /* the handle keeps pointers to these: drop them before they go */
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, NULL);
    wipe_headers(headers);
    if (done != CURLE_OK) {
        free(into.data);
        qhpc_status code;
        if (into.too_large) {
            code = qhpc_fail(session, QHPC_E_PROTOCOL,
                             "the broker's answer to %s %s is larger than %zu MiB", method, path,
                             QHPC_MAX_ANSWER_BYTES >> 20);
        } else if (done == CURLE_OPERATION_TIMEDOUT) {
            code = qhpc_fail(session, QHPC_E_NETWORK, "no answer from the broker at %s within %.0f s",
                             session->url, timeout_ms / 1000.0);
        } else if (done == CURLE_WRITE_ERROR) {
            code = qhpc_fail(session, QHPC_E_NOMEM, "out of memory reading the broker's answer");
        } else {
            code = qhpc_fail(session, QHPC_E_NETWORK, "cannot reach the broker at %s: %s",
                             session->url, *curl_error ? curl_error : curl_easy_strerror(done));
        }
        free(url);
        return code;
    }
    free(url);
    answer->status = status;
    answer->len = into.len;
    answer->body = into.data ? into.data : calloc(1, 1);
    if (answer->body == NULL) {
        return qhpc_fail(session, QHPC_E_NOMEM, "out of memory");
    }
    return QHPC_OK;
}

/* the problem body's type without its prefix, and its detail ("" where missing) */
typedef struct problem {
    char type[64];
    char detail[QHPC_MESSAGE_MAX];
    long long line;
    long long column;
} problem;

static void read_problem(const qhpc_answer *answer, problem *out)
{
    memset(out, 0, sizeof *out);
    json_error_t error;
    json_t *body = json_loadb(answer->body, answer->len, JSON_REJECT_DUPLICATES, &error);
    if (!json_is_object(body)) {
        json_decref(body);
        snprintf(out->detail, sizeof out->detail, "HTTP %ld with no problem body", answer->status);
        return;
    }
    const char *type = json_string_value(json_object_get(body, "type"));
    if (type != NULL && strncmp(type, PROBLEM_PREFIX, strlen(PROBLEM_PREFIX)) == 0) {
        qhpc_clean_copy(out->type, sizeof out->type, type + strlen(PROBLEM_PREFIX));
    }
    const char *detail = json_string_value(json_object_get(body, "detail"));
    qhpc_clean_copy(out->detail, sizeof out->detail, detail ? detail : "(no detail)");
    json_t *line = json_object_get(body, "line");
    json_t *column = json_object_get(body, "column");
    out->line = json_is_integer(line) ? json_integer_value(line) : 0;
    out->column = json_is_integer(column) ? json_integer_value(column) : 0;
    json_decref(body);
}

qhpc_status qhpc_refusal(qhpc_session *session, const qhpc_answer *answer, const char *doing)
{
    problem p;
    read_problem(answer, &p);
    const char *id = session->session_id;
    switch (answer->status) {
    case 401:
        if (strcmp(p.type, "token-revoked") == 0) {
            return qhpc_fail(session, QHPC_E_CLOSED,
                             "session %s is closed: the broker revoked its token (%s); the job's "
                             "session has ended, submit nothing more", id, p.detail);
        }
        if (strcmp(p.type, "token-expired") == 0) {
            return qhpc_fail(session, QHPC_E_CLOSED,
                             "session %s has passed its deadline: its token expired (%s)", id,
                             p.detail);
        }
        return qhpc_fail(session, QHPC_E_AUTH, "the broker refused the session token while %s: %s",
                         doing, p.detail);
    case 403:
        return qhpc_fail(session, QHPC_E_AUTH, "the broker refused the session token while %s: %s",
                         doing, p.detail);
    case 409:
        if (strcmp(p.type, "session-closed") == 0) {
            return qhpc_fail(session, QHPC_E_CLOSED, "session %s is closed: %s", id, p.detail);
        }
        return qhpc_fail(session, QHPC_E_BUSY, "the broker cannot take it now (%s): %s", doing,
                         p.detail);
    case 413:
    case 422:
        return qhpc_fail(session, QHPC_E_INPUT, "the broker refused the task (%s): %s",
                         *p.type ? p.type : "unprocessable", p.detail);
    case 429:
    case 503:
        return qhpc_fail(session, QHPC_E_BUSY, "the broker is busy while %s (HTTP %ld): %s; retry "
                         "later", doing, answer->status, p.detail);
    case 404:
        return qhpc_fail(session, QHPC_E_PROTOCOL,
                         "the broker at %s does not know what was asked while %s (404: %s); is "
                         "QHPC_URL the broker's address?", session->url, doing, p.detail);
    case 410:
        return qhpc_fail(session, QHPC_E_PROTOCOL, "the result is gone while %s (410: %s)", doing,
                         p.detail);
    default:
        return qhpc_fail(session, QHPC_E_PROTOCOL, "unexpected answer while %s (HTTP %ld): %s",
                         doing, answer->status, p.detail);
    }
}
