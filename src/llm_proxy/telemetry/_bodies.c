/* The GenAI attributes of request and response bodies, without parsing the bodies into objects.
 *
 * A span needs a handful of values from a body of hundreds of bytes (the request's numeric
 * parameters; the response's id, model, finish reasons and cache-write tokens). Parsing the whole
 * body with orjson builds every message string, list and dict only to drop them; here the body is
 * validated and walked in place, and only the wanted values become Python objects. The result is
 * the pure-Python path's (call_spans.document_attributes over orjson.loads) exactly: an invalid
 * document gives nothing, and whatever the scan cannot judge alike (surrogate escapes, escaped
 * keys where keys matter, repeated wanted keys, numbers orjson turns into floats or rejects,
 * nesting near orjson's limit) is handed to orjson and the object walk instead.
 */
#include "_bodies.h"

#include <string.h>

#define MAX_PARSED_BODY (1024 * 1024)
#define MAX_DEPTH 1000
#define MAX_REASONS 64

enum { SCAN_OK = 0, SCAN_INVALID, SCAN_FALLBACK };

typedef struct {
    const unsigned char *p, *end;
} Scan;

typedef struct {
    const unsigned char *at;
    Py_ssize_t len;
    char kind; /* s string, S string with escapes, i int, f float, t true, F false, n null, o object, a array */
} Token;

typedef int (*MemberFn)(Scan *, int depth, const Token *key, void *ctx);
typedef int (*ElementFn)(Scan *, int depth, void *ctx);

static void skip_ws(Scan *s) {
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t')) s->p++;
}

/* The continuation bytes of a UTF-8 sequence led by `c` (already consumed): no overlong forms, no
 * surrogates, nothing above U+10FFFF, as orjson requires. */
static int utf8_tail(Scan *s, unsigned char c) {
    int n = 2;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) n = 1;
    else if (c == 0xE0) lo = 0xA0;
    else if (c == 0xED) hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 2;
    else if (c == 0xF0) n = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 3;
    else if (c == 0xF4) n = 3, hi = 0x8F;
    else return SCAN_INVALID;
    if (s->end - s->p < n || s->p[0] < lo || s->p[0] > hi) return SCAN_INVALID;
    for (int i = 1; i < n; i++) {
        if ((s->p[i] & 0xC0) != 0x80) return SCAN_INVALID;
    }
    s->p += n;
    return SCAN_OK;
}

static int hex_digit(unsigned char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int scan_escape(Scan *s) {
    if (s->end - s->p < 2) return SCAN_INVALID;
    unsigned char e = s->p[1];
    if (e == 'u') {
        unsigned code = 0;
        if (s->end - s->p < 6) return SCAN_INVALID;
        for (int i = 2; i < 6; i++) {
            int digit = hex_digit(s->p[i]);
            if (digit < 0) return SCAN_INVALID;
            code = code * 16 + (unsigned)digit;
        }
        s->p += 6;
        return code >= 0xD800 && code <= 0xDFFF ? SCAN_FALLBACK : SCAN_OK;
    }
    if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' || e == 't') {
        s->p += 2;
        return SCAN_OK;
    }
    return SCAN_INVALID;
}

/* A string; `s->p` at its opening quote. The token is its raw content, between the quotes. */
static int scan_string(Scan *s, Token *t) {
    const unsigned char *start = ++s->p;
    int escaped = 0;
    for (;;) {
        while (s->p < s->end && *s->p >= 0x20 && *s->p < 0x80 && *s->p != '"' && *s->p != '\\') s->p++;
        if (s->p >= s->end) return SCAN_INVALID;
        unsigned char c = *s->p;
        if (c == '"') break;
        int status = SCAN_OK;
        if (c == '\\') {
            escaped = 1;
            status = scan_escape(s);
        } else if (c < 0x20) {
            return SCAN_INVALID;
        } else if (c < 0x80) {
            s->p++;
        } else {
            s->p++;
            status = utf8_tail(s, c);
        }
        if (status != SCAN_OK) return status;
    }
    t->at = start;
    t->len = s->p - start;
    t->kind = escaped ? 'S' : 's';
    s->p++;
    return SCAN_OK;
}

static const unsigned char *digits(const unsigned char *p, const unsigned char *end) {
    while (p < end && *p >= '0' && *p <= '9') p++;
    return p;
}

/* A number (JSON grammar). Those orjson would turn into a float or an error though they are ints or finite
 * (more than 18 integer digits, long mantissas, three-digit exponents) are left to it. */
static int scan_number(Scan *s, Token *t) {
    const unsigned char *p = s->p, *end = s->end, *mark;
    int is_float = 0;
    Py_ssize_t int_digits, exp_digits = 0;
    if (p < end && *p == '-') p++;
    if (p >= end || *p < '0' || *p > '9') return SCAN_INVALID;
    mark = p;
    p = *p == '0' ? p + 1 : digits(p, end);
    int_digits = p - mark;
    if (p < end && *p == '.') {
        is_float = 1;
        mark = ++p;
        p = digits(p, end);
        if (p == mark) return SCAN_INVALID;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        if (p < end && (*p == '+' || *p == '-')) p++;
        mark = p;
        p = digits(p, end);
        if (p == mark) return SCAN_INVALID;
        exp_digits = p - mark;
    }
    t->at = s->p;
    t->len = p - s->p;
    t->kind = is_float ? 'f' : 'i';
    s->p = p;
    return (t->len > 24 || exp_digits > 2 || (!is_float && int_digits > 18)) ? SCAN_FALLBACK : SCAN_OK;
}

static int scan_literal(Scan *s, Token *t, const char *word, char kind) {
    size_t n = strlen(word);
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0) return SCAN_INVALID;
    t->at = s->p;
    t->len = (Py_ssize_t)n;
    t->kind = kind;
    s->p += n;
    return SCAN_OK;
}

static int scan_object(Scan *s, int depth, MemberFn member, void *ctx);
static int scan_array(Scan *s, int depth, ElementFn element, void *ctx);

/* Any value, validated and passed over; its token says what it was (and holds strings and numbers). */
static int scan_value(Scan *s, int depth, Token *t) {
    skip_ws(s);
    if (s->p >= s->end) return SCAN_INVALID;
    switch (*s->p) {
    case '"': return scan_string(s, t);
    case '{': t->kind = 'o'; return scan_object(s, depth + 1, NULL, NULL);
    case '[': t->kind = 'a'; return scan_array(s, depth + 1, NULL, NULL);
    case 't': return scan_literal(s, t, "true", 't');
    case 'f': return scan_literal(s, t, "false", 'F');
    case 'n': return scan_literal(s, t, "null", 'n');
    default: return scan_number(s, t);
    }
}

/* Past a container's opening bracket; true when it is empty (and its closing bracket passed too). */
static int opens_empty(Scan *s, unsigned char close) {
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return 1;
    }
    return 0;
}

/* After an item: a comma (`*more` set) or the closing bracket; anything else is invalid. */
static int separator(Scan *s, unsigned char close, int *more) {
    skip_ws(s);
    if (s->p >= s->end || (*s->p != ',' && *s->p != close)) return SCAN_INVALID;
    *more = *s->p++ == ',';
    return SCAN_OK;
}

/* An object (`s->p` at its brace) at nesting `depth`; `member`, if given, reads each value after its key. */
static int scan_object(Scan *s, int depth, MemberFn member, void *ctx) {
    if (depth > MAX_DEPTH) return SCAN_FALLBACK;
    if (opens_empty(s, '}')) return SCAN_OK;
    for (int more = 1; more;) {
        Token key, value;
        int status;
        skip_ws(s);
        if (s->p >= s->end || *s->p != '"') return SCAN_INVALID;
        if ((status = scan_string(s, &key)) != SCAN_OK) return status;
        skip_ws(s);
        if (s->p >= s->end || *s->p != ':') return SCAN_INVALID;
        s->p++;
        status = member ? member(s, depth, &key, ctx) : scan_value(s, depth, &value);
        if (status != SCAN_OK || (status = separator(s, '}', &more)) != SCAN_OK) return status;
    }
    return SCAN_OK;
}

static int scan_array(Scan *s, int depth, ElementFn element, void *ctx) {
    if (depth > MAX_DEPTH) return SCAN_FALLBACK;
    if (opens_empty(s, ']')) return SCAN_OK;
    for (int more = 1; more;) {
        Token value;
        int status = element ? element(s, depth, ctx) : scan_value(s, depth, &value);
        if (status != SCAN_OK || (status = separator(s, ']', &more)) != SCAN_OK) return status;
    }
    return SCAN_OK;
}

/* The value of the member whose key was just read, when the caller wants to look inside an object or array. */
static int peek(Scan *s) {
    skip_ws(s);
    return s->p < s->end ? *s->p : 0;
}

static int key_is(const Token *key, const char *name, size_t n) {
    return (size_t)key->len == n && memcmp(key->at, name, n) == 0;
}

#define KEY_IS(key, literal) key_is((key), (literal), sizeof(literal) - 1)

/* ---- the request: numeric parameters at the top level ---- */

typedef struct {
    const Parameters *parameters;
    unsigned long long seen;
    int count;
    int index[MAX_PARAMETERS];
    Token values[MAX_PARAMETERS];
} RequestScan;

static int request_member(Scan *s, int depth, const Token *key, void *ctx) {
    RequestScan *r = ctx;
    Token value;
    if (key->kind == 'S') return SCAN_FALLBACK;
    int index = -1;
    for (int i = 0; i < r->parameters->count; i++) {
        if (key_is(key, r->parameters->names[i], (size_t)r->parameters->lengths[i])) index = i;
    }
    int status = scan_value(s, depth, &value);
    if (status != SCAN_OK || index < 0) return status;
    if (r->seen & (1ULL << index)) return SCAN_FALLBACK;
    r->seen |= 1ULL << index;
    if (value.kind == 'i' || value.kind == 'f') {
        r->index[r->count] = index;
        r->values[r->count++] = value;
    }
    return SCAN_OK;
}

/* ---- the response: id, model, choices[].finish_reason, usage.cache_creation_input_tokens ---- */

typedef struct {
    unsigned seen;
    int choice_has_reason;
    Token id, model, cache_write;
    int reasons;
    Token reason[MAX_REASONS];
} ResponseScan;

static int choice_member(Scan *s, int depth, const Token *key, void *ctx) {
    ResponseScan *r = ctx;
    Token value;
    if (key->kind == 'S') return SCAN_FALLBACK;
    int status = scan_value(s, depth, &value);
    if (status != SCAN_OK || !KEY_IS(key, "finish_reason")) return status;
    if (r->choice_has_reason++) return SCAN_FALLBACK;
    if (value.kind == 's' || value.kind == 'S') {
        if (r->reasons == MAX_REASONS) return SCAN_FALLBACK;
        r->reason[r->reasons++] = value;
    }
    return SCAN_OK;
}

static int choice_element(Scan *s, int depth, void *ctx) {
    ResponseScan *r = ctx;
    Token value;
    if (peek(s) != '{') return scan_value(s, depth, &value);
    r->choice_has_reason = 0;
    return scan_object(s, depth + 1, choice_member, ctx);
}

static int usage_member(Scan *s, int depth, const Token *key, void *ctx) {
    ResponseScan *r = ctx;
    Token value;
    if (key->kind == 'S') return SCAN_FALLBACK;
    int status = scan_value(s, depth, &value);
    if (status != SCAN_OK || !KEY_IS(key, "cache_creation_input_tokens")) return status;
    if (r->cache_write.kind) return SCAN_FALLBACK;
    r->cache_write = value;
    if (value.kind != 'i' && value.kind != 't' && value.kind != 'F') r->cache_write.kind = 'x';
    return SCAN_OK;
}

static int response_member(Scan *s, int depth, const Token *key, void *ctx) {
    ResponseScan *r = ctx;
    Token value;
    unsigned bit = KEY_IS(key, "id") ? 1 : KEY_IS(key, "model") ? 2 : KEY_IS(key, "choices") ? 4
                 : KEY_IS(key, "usage") ? 8 : 0;
    if (key->kind == 'S') return SCAN_FALLBACK;
    if (bit & r->seen) return SCAN_FALLBACK;
    r->seen |= bit;
    if (bit == 4 && peek(s) == '[') return scan_array(s, depth + 1, choice_element, ctx);
    if (bit == 8 && peek(s) == '{') return scan_object(s, depth + 1, usage_member, ctx);
    int status = scan_value(s, depth, &value);
    if (status == SCAN_OK && (value.kind == 's' || value.kind == 'S')) {
        if (bit == 1) r->id = value;
        if (bit == 2) r->model = value;
    }
    return status;
}

/* ---- values, and the object walk used where the scan hands over ---- */

static PyObject *token_value(const BodyNames *names, const Token *t) {
    char text[32];
    switch (t->kind) {
    case 's': return PyUnicode_DecodeUTF8((const char *)t->at, t->len, "strict");
    case 'S': {
        PyObject *quoted = PyBytes_FromStringAndSize((const char *)t->at - 1, t->len + 2);
        if (quoted == NULL) return NULL;
        PyObject *value = PyObject_CallOneArg(names->loads, quoted);
        Py_DECREF(quoted);
        return value;
    }
    case 't': return Py_NewRef(Py_True);
    case 'F': return Py_NewRef(Py_False);
    case 'i':
    case 'f':
        memcpy(text, t->at, (size_t)t->len); /* at most 24 characters (scan_number) */
        text[t->len] = '\0';
        if (t->kind == 'i') return PyLong_FromString(text, NULL, 10);
        double value = PyOS_string_to_double(text, NULL, NULL);
        return value == -1.0 && PyErr_Occurred() ? NULL : PyFloat_FromDouble(value);
    default: PyErr_SetString(PyExc_SystemError, "body scan: no value for this token"); return NULL;
    }
}

static int set_token(const BodyNames *names, PyObject *found, PyObject *key, const Token *t) {
    PyObject *value = token_value(names, t);
    if (value == NULL) return -1;
    int result = PyDict_SetItem(found, key, value);
    Py_DECREF(value);
    return result;
}

/* The body parsed as call_spans._json does (None for what it does not parse); NULL with an exception set. */
static PyObject *parse_body(const BodyNames *names, PyObject *body) {
    PyObject *parsed = PyObject_CallOneArg(names->loads, body);
    if (parsed == NULL && PyErr_ExceptionMatches(names->decode_error)) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return parsed;
}

static int walk_request(const Parameters *parameters, PyObject *found, PyObject *request) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(request, &pos, &key, &value)) {
        for (int i = 0; i < parameters->count; i++) {
            int same = PyUnicode_Check(key) ? PyUnicode_Compare(key, parameters->keys[i]) : 1;
            if (same == -1 && PyErr_Occurred()) return -1;
            if (same == 0 && (PyLong_CheckExact(value) || PyFloat_CheckExact(value))
                && PyDict_SetItem(found, parameters->attributes[i], value) < 0)
                return -1;
        }
    }
    return 0;
}

static PyObject *get(PyObject *dict, const char *key) {
    PyObject *value = PyDict_GetItemString(dict, key); /* borrowed; keys of parsed JSON are str */
    return value;
}

static int walk_response(const BodyNames *names, PyObject *found, PyObject *response) {
    PyObject *value = get(response, "id");
    if (value != NULL && PyUnicode_Check(value) && PyDict_SetItem(found, names->response_id, value) < 0) return -1;
    value = get(response, "model");
    if (value != NULL && PyUnicode_Check(value) && PyDict_SetItem(found, names->response_model, value) < 0)
        return -1;
    value = get(response, "choices");
    if (value != NULL && PyList_Check(value)) {
        PyObject *reasons = PyList_New(0);
        if (reasons == NULL) return -1;
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(value); i++) {
            PyObject *choice = PyList_GET_ITEM(value, i);
            PyObject *reason = PyDict_Check(choice) ? get(choice, "finish_reason") : NULL;
            if (reason != NULL && PyUnicode_Check(reason) && PyList_Append(reasons, reason) < 0) {
                Py_DECREF(reasons);
                return -1;
            }
        }
        PyObject *tuple = PyList_GET_SIZE(reasons) ? PyList_AsTuple(reasons) : NULL;
        int failed = PyList_GET_SIZE(reasons) && (tuple == NULL
                                                  || PyDict_SetItem(found, names->finish_reasons, tuple) < 0);
        Py_XDECREF(tuple);
        Py_DECREF(reasons);
        if (failed) return -1;
    }
    PyObject *usage = get(response, "usage");
    value = usage != NULL && PyDict_Check(usage) ? get(usage, "cache_creation_input_tokens") : NULL;
    if (value != NULL && PyLong_Check(value)) return PyDict_SetItem(found, names->cache_write_name, value);
    return 0;
}

/* The object walk over orjson's parse, for what the scan handed over. */
static int walk_body(const Parameters *parameters, const BodyNames *names, PyObject *found, PyObject *body) {
    PyObject *parsed = parse_body(names, body);
    if (parsed == NULL) return -1;
    int result = 0;
    if (PyDict_Check(parsed)) {
        result = parameters ? walk_request(parameters, found, parsed) : walk_response(names, found, parsed);
    }
    Py_DECREF(parsed);
    return result;
}

/* 1 to scan `body` (an object that _json would parse), 0 when it gives nothing, -1 on a type error. */
static int scannable(PyObject *body, Scan *s) {
    const char *data;
    Py_ssize_t size;
    if (PyBytes_Check(body)) {
        data = PyBytes_AS_STRING(body);
        size = PyBytes_GET_SIZE(body);
    } else if (PyByteArray_Check(body)) {
        data = PyByteArray_AS_STRING(body);
        size = PyByteArray_GET_SIZE(body);
    } else {
        PyErr_SetString(PyExc_TypeError, "call record: bodies must be bytes");
        return -1;
    }
    if (size == 0 || size > MAX_PARSED_BODY || data[0] != '{') return 0; /* "[...]" parses, but not to a dict */
    s->p = (const unsigned char *)data;
    s->end = s->p + size;
    return 1;
}

static int scan_document(Scan *s, MemberFn member, void *ctx) {
    int status = scan_object(s, 1, member, ctx);
    if (status != SCAN_OK) return status;
    skip_ws(s);
    return s->p == s->end ? SCAN_OK : SCAN_INVALID;
}

int request_body_attributes(const Parameters *parameters, const BodyNames *names, PyObject *found, PyObject *body) {
    Scan s;
    RequestScan r = {.parameters = parameters};
    int ready = scannable(body, &s);
    if (ready <= 0) return ready;
    int status = scan_document(&s, request_member, &r);
    if (status == SCAN_FALLBACK) return walk_body(parameters, names, found, body);
    for (int i = 0; status == SCAN_OK && i < r.count; i++) {
        if (set_token(names, found, parameters->attributes[r.index[i]], &r.values[i]) < 0) return -1;
    }
    return 0;
}

int response_body_attributes(const BodyNames *names, PyObject *found, PyObject *body) {
    Scan s;
    ResponseScan r = {0};
    int ready = scannable(body, &s);
    if (ready <= 0) return ready;
    int status = scan_document(&s, response_member, &r);
    if (status == SCAN_FALLBACK) return walk_body(NULL, names, found, body);
    if (status != SCAN_OK) return 0;
    if (r.id.kind && set_token(names, found, names->response_id, &r.id) < 0) return -1;
    if (r.model.kind && set_token(names, found, names->response_model, &r.model) < 0) return -1;
    if (r.reasons) {
        PyObject *reasons = PyTuple_New(r.reasons);
        if (reasons == NULL) return -1;
        for (int i = 0; i < r.reasons; i++) {
            PyObject *reason = token_value(names, &r.reason[i]);
            if (reason == NULL) {
                Py_DECREF(reasons);
                return -1;
            }
            PyTuple_SET_ITEM(reasons, i, reason);
        }
        int failed = PyDict_SetItem(found, names->finish_reasons, reasons);
        Py_DECREF(reasons);
        if (failed) return -1;
    }
    if (r.cache_write.kind && r.cache_write.kind != 'x'
        && set_token(names, found, names->cache_write_name, &r.cache_write) < 0)
        return -1;
    return 0;
}

int parameters_init(Parameters *parameters, PyObject *mapping) {
    Py_ssize_t pos = 0;
    PyObject *key, *attribute;
    parameters_clear(parameters);
    while (PyDict_Next(mapping, &pos, &key, &attribute)) {
        if (parameters->count == MAX_PARAMETERS) {
            PyErr_SetString(PyExc_ValueError, "too many request parameters for the span encoder");
            return -1;
        }
        if (!PyUnicode_Check(key) || !PyUnicode_Check(attribute)) {
            PyErr_SetString(PyExc_TypeError, "request parameters and their attributes must be str");
            return -1;
        }
        int i = parameters->count;
        if ((parameters->names[i] = PyUnicode_AsUTF8AndSize(key, &parameters->lengths[i])) == NULL) return -1;
        parameters->keys[i] = Py_NewRef(key);
        parameters->attributes[i] = Py_NewRef(attribute);
        parameters->count++;
    }
    return 0;
}

void parameters_clear(Parameters *parameters) {
    for (int i = 0; i < parameters->count; i++) {
        Py_CLEAR(parameters->keys[i]);
        Py_CLEAR(parameters->attributes[i]);
    }
    parameters->count = 0;
}
