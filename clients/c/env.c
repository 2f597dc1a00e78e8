/*
 * env.c: where a session comes from. A Slurm job's TaskProlog puts it in the environment
 * (names as in src/qhpc/envvars.py, which defines them for every side); a caller may
 * also name it, with the token in a file. Every value is checked here, before anything
 * is sent: the URL and the ids end up in request lines, the token in a header, so a
 * stray newline or '/' must never reach them. No message quotes the token.
 */
#define _DEFAULT_SOURCE

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define URL_ENV "QHPC_URL"
#define SESSION_ENV "QHPC_SESSION"
#define SESSION_ID_ENV "QHPC_SESSION_ID"
#define RESOURCE_ENV "QHPC_RESOURCE"
#define QRMI_RESOURCES_ENV "QRMI_JOB_QPU_RESOURCES"
#define TOKEN_PREFIX "qhpc_"
#define MAX_TOKEN_FILE 4096

static const char MISSING_HINT[] =
    "qhpc's Slurm TaskProlog sets it for jobs submitted with --qpu=NAME";

/* http(s)://authority[/path], printable, no credentials in it */
static int url_problem(const char *url, const char **why)
{
    size_t len = strlen(url);
    const char *rest;
    if (strncmp(url, "http://", 7) == 0) {
        rest = url + 7;
    } else if (strncmp(url, "https://", 8) == 0) {
        rest = url + 8;
    } else {
        *why = "is not an http:// or https:// URL";
        return 1;
    }
    if (len > QHPC_MAX_URL) {
        *why = "is too long";
        return 1;
    }
    for (const char *c = url; *c; c++) {
        if (*c <= ' ' || *c == 0x7f || *c == '?' || *c == '#') {
            *why = "holds spaces, control characters, a query or a fragment";
            return 1;
        }
    }
    size_t authority = strcspn(rest, "/");
    if (authority == 0) {
        *why = "names no host";
        return 1;
    }
    if (memchr(rest, '@', authority) != NULL) {
        *why = "holds credentials (user@host): the token comes from " SESSION_ENV;
        return 1;
    }
    return 0;
}

static int plain_id(const char *id)
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

/* qhpc_ + URL-safe base64, as the broker issues them (security/tokens.py) */
static int plain_token(const char *token)
{
    size_t len = strlen(token);
    size_t prefix = strlen(TOKEN_PREFIX);
    if (len <= prefix || len > QHPC_MAX_TOKEN || strncmp(token, TOKEN_PREFIX, prefix) != 0) {
        return 0;
    }
    for (const char *c = token; *c; c++) {
        if (!(isascii((unsigned char)*c) && (isalnum((unsigned char)*c) || *c == '_' || *c == '-'))) {
            return 0;
        }
    }
    return 1;
}

static char *dup_or_null(const char *text)
{
    return text ? strdup(text) : NULL;
}

void qhpc_free_session(qhpc_session *session)
{
    if (session == NULL) {
        return;
    }
    if (session->curl != NULL) {
        curl_easy_cleanup(session->curl);
    }
    if (session->token != NULL) {
        explicit_bzero(session->token, strlen(session->token));
        free(session->token);
    }
    free(session->url);
    free(session->session_id);
    free(session->resource);
    free(session);
}

qhpc_session *qhpc_new_session(const char *url, const char *session_id, const char *token,
                               const char *resource, const char *const labels[3], qhpc_error *err)
{
    const char *why = NULL;
    if (url_problem(url, &why)) {
        qhpc_report(err, QHPC_E_ENV, "%s %s", labels[0], why);
        return NULL;
    }
    if (!plain_id(session_id)) {
        qhpc_report(err, QHPC_E_ENV, "%s is malformed: 1-%d letters, digits, '_' or '-'",
                    labels[1], QHPC_MAX_ID);
        return NULL;
    }
    if (!plain_token(token)) {
        qhpc_report(err, QHPC_E_ENV,
                    "%s is malformed: qhpc tokens start with '" TOKEN_PREFIX
                    "' and hold at most %d letters, digits, '_' or '-'", labels[2], QHPC_MAX_TOKEN);
        return NULL;
    }
    if (qhpc_global_init() != QHPC_OK) {
        qhpc_report(err, QHPC_E_NETWORK, "libcurl could not be initialised");
        return NULL;
    }
    qhpc_session *session = calloc(1, sizeof *session);
    if (session == NULL) {
        qhpc_report(err, QHPC_E_NOMEM, "out of memory");
        return NULL;
    }
    session->url = strdup(url);
    session->session_id = strdup(session_id);
    session->token = strdup(token);
    session->resource = dup_or_null(resource ? resource : "");
    session->refs = 1;
    if (!session->url || !session->session_id || !session->token || !session->resource) {
        qhpc_free_session(session);
        qhpc_report(err, QHPC_E_NOMEM, "out of memory");
        return NULL;
    }
    size_t len = strlen(session->url);
    while (len > 0 && session->url[len - 1] == '/') {
        session->url[--len] = '\0';
    }
    qhpc_report(err, QHPC_OK, "%s", "");
    return session;
}

/* QHPC_SESSION_<KEY>: KEY is the QPU's name in capitals, other characters as '_' */
static int keyed_name(char *out, size_t size, const char *prefix, const char *qpu)
{
    size_t used = strlen(prefix);
    if (used + 1 + strlen(qpu) + 1 > size) {
        return 0;
    }
    memcpy(out, prefix, used);
    out[used++] = '_';
    for (const char *c = qpu; *c; c++) {
        unsigned char u = (unsigned char)*c;
        out[used++] = (isascii(u) && isalnum(u)) ? (char)toupper(u) : '_';
    }
    out[used] = '\0';
    return 1;
}

static qhpc_session *from_env(const char *qpu, qhpc_error *err)
{
    const char *resource = getenv(RESOURCE_ENV);
    const char *token_name = SESSION_ENV;
    const char *id_name = SESSION_ID_ENV;
    char keyed_token[64 + QHPC_MAX_ID];
    char keyed_id[64 + QHPC_MAX_ID];
    if (qpu != NULL && strlen(qpu) > QHPC_MAX_ID) {
        qhpc_report(err, QHPC_E_ARG, "the QPU name is longer than %d characters", QHPC_MAX_ID);
        return NULL;
    }
    if (qpu != NULL && (resource == NULL || strcmp(qpu, resource) != 0)) {
        if (!keyed_name(keyed_token, sizeof keyed_token, SESSION_ENV, qpu) ||
            !keyed_name(keyed_id, sizeof keyed_id, SESSION_ID_ENV, qpu)) {
            qhpc_report(err, QHPC_E_ARG, "the QPU name is too long");
            return NULL;
        }
        token_name = keyed_token;
        id_name = keyed_id;
        resource = qpu;
        if (getenv(token_name) == NULL) {
            const char *held = getenv(QRMI_RESOURCES_ENV);
            char shown[QHPC_MAX_ID + 1];
            qhpc_clean_copy(shown, sizeof shown, qpu);
            qhpc_report(err, QHPC_E_ENV, "no session on QPU '%s' here: this job holds %s (%s is unset)",
                        shown, held && *held ? held : "none", token_name);
            return NULL;
        }
    }
    const char *url = getenv(URL_ENV);
    const char *token = getenv(token_name);
    const char *session_id = getenv(id_name);
    const char *missing = !url || !*url ? URL_ENV : !token || !*token ? token_name
                        : !session_id || !*session_id ? id_name : NULL;
    if (missing != NULL) {
        qhpc_report(err, QHPC_E_ENV, "no QPU session in this environment: %s is unset (%s)",
                    missing, MISSING_HINT);
        return NULL;
    }
    const char *const labels[3] = {URL_ENV, id_name, token_name};
    return qhpc_new_session(url, session_id, token, resource, labels, err);
}

qhpc_session *qhpc_session_from_env(qhpc_error *err)
{
    return from_env(NULL, err);
}

qhpc_session *qhpc_session_from_env_for(const char *qpu, qhpc_error *err)
{
    if (qpu == NULL || *qpu == '\0') {
        qhpc_report(err, QHPC_E_ARG, "no QPU named: pass one of QRMI_JOB_QPU_RESOURCES");
        return NULL;
    }
    return from_env(qpu, err);
}

/* the token in `path`: a regular file of at most MAX_TOKEN_FILE bytes, white space trimmed */
static char *read_token_file(const char *path, qhpc_error *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        qhpc_report(err, QHPC_E_ENV, "cannot open the token file %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        qhpc_report(err, QHPC_E_ENV, "the token file %s is not a regular file", path);
        return NULL;
    }
    if (st.st_size > MAX_TOKEN_FILE) {
        close(fd);
        qhpc_report(err, QHPC_E_ENV, "the token file %s is larger than %d bytes", path,
                    MAX_TOKEN_FILE);
        return NULL;
    }
    char *text = calloc(MAX_TOKEN_FILE + 2, 1);
    if (text == NULL) {
        close(fd);
        qhpc_report(err, QHPC_E_NOMEM, "out of memory");
        return NULL;
    }
    size_t got = 0;
    while (got <= MAX_TOKEN_FILE) {
        ssize_t n = read(fd, text + got, MAX_TOKEN_FILE + 1 - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            int saved = errno;
            close(fd);
            explicit_bzero(text, MAX_TOKEN_FILE + 2);
            free(text);
            qhpc_report(err, QHPC_E_ENV, "cannot read the token file %s: %s", path, strerror(saved));
            return NULL;
        }
        if (n == 0) {
            break;
        }
        got += (size_t)n;
    }
    close(fd);
    if (got > MAX_TOKEN_FILE) {
        explicit_bzero(text, MAX_TOKEN_FILE + 2);
        free(text);
        qhpc_report(err, QHPC_E_ENV, "the token file %s is larger than %d bytes", path,
                    MAX_TOKEN_FILE);
        return NULL;
    }
    size_t start = strspn(text, " \t\r\n");
    size_t end = got;
    while (end > start && isspace((unsigned char)text[end - 1])) {
        end--;
    }
    memmove(text, text + start, end - start);
    memset(text + (end - start), 0, got - (end - start) + 1);
    return text;
}

qhpc_session *qhpc_session_open(const char *url, const char *session_id, const char *token_file,
                                qhpc_error *err)
{
    if (url == NULL || session_id == NULL || token_file == NULL) {
        qhpc_report(err, QHPC_E_ARG, "qhpc_session_open needs a URL, a session id and a token file");
        return NULL;
    }
    char *token = read_token_file(token_file, err);
    if (token == NULL) {
        return NULL;
    }
    const char *const labels[3] = {"the broker's URL", "the session id", "the token file's token"};
    qhpc_session *session = qhpc_new_session(url, session_id, token, NULL, labels, err);
    explicit_bzero(token, strlen(token));
    free(token);
    return session;
}
