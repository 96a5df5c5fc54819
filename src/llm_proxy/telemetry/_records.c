/* Call records on the pipe to the exporter process: `pack` in the worker, `unpack` in the exporter.
 *
 * What marshal did for these records, cheaper: marshal encodes every str to a new bytes object
 * and writes nanosecond timestamps (beyond 2**31) as 15-bit digits; here strings are copied from
 * their UTF-8 form and ints in int64 range are 8 bytes (callgrind, one record: 9,000 → 6,200
 * instructions; and `pack_call` saves building the tuple too).
 * The values that occur in records are kept with their types (None, bool, int, float, str, bytes,
 * tuple, list, dict; a bytearray arrives as bytes, as with marshal); anything else is refused.
 *
 * `pack_call` builds a call's record straight from the request context and the stop event (what
 * tracing.Tracing._record builds as a tuple when the exporter process reads the bodies) and packs it
 * without the tuple. `unpack` reads every value packed one after another in a buffer.
 *
 * Layout: one tag byte per value, little-endian. N None, T True, F False, i int64, I big int
 * (u32 length, decimal), d float64, s str (u32 length, UTF-8), b bytes (u32 length), t tuple,
 * l list (u32 count, items), D dict (u32 count, key and value pairs).
 */
#include "_records.h"
#include "_protobuf.h"

#include <stdint.h>
#include <string.h>

#define MAX_NESTING 32

static int put_tag_u32(Buf *o, char tag, Py_ssize_t n) {
    if (n > UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "record value too large for the exporter pipe");
        return -1;
    }
    if (grow(o, 5) < 0) return -1;
    char *at = o->data + o->len;
    at[0] = tag;
    for (int i = 0; i < 4; i++) at[1 + i] = (char)((uint32_t)n >> (8 * i));
    o->len += 5;
    return 0;
}

static int put_sized(Buf *o, char tag, const char *bytes, Py_ssize_t n) {
    if (put_tag_u32(o, tag, n) < 0 || grow(o, n) < 0) return -1;
    memcpy(o->data + o->len, bytes, (size_t)n);
    o->len += n;
    return 0;
}

static int put_fixed(Buf *o, char tag, uint64_t bits) {
    if (grow(o, 9) < 0) return -1;
    char *at = o->data + o->len;
    at[0] = tag;
    for (int i = 0; i < 8; i++) at[1 + i] = (char)(bits >> (8 * i));
    o->len += 9;
    return 0;
}

static int put_double(Buf *o, double value) {
    unsigned char bytes[8];
    uint64_t bits = 0;
    if (PyFloat_Pack8(value, (char *)bytes, 1) < 0) return -1;
    for (int i = 7; i >= 0; i--) bits = bits << 8 | bytes[i];
    return put_fixed(o, 'd', bits);
}

static int put_value(Buf *o, PyObject *value, int depth);

static int put_items(Buf *o, char tag, PyObject *sequence, int depth) {
    PyObject **items = PySequence_Fast_ITEMS(sequence);
    Py_ssize_t n = PySequence_Fast_GET_SIZE(sequence);
    if (put_tag_u32(o, tag, n) < 0) return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (put_value(o, items[i], depth + 1) < 0) return -1;
    }
    return 0;
}

static int put_int(Buf *o, PyObject *value) {
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (v == -1 && PyErr_Occurred()) return -1;
    if (!overflow) return put_fixed(o, 'i', (uint64_t)v);
    PyObject *text = PyObject_Str(value);
    if (text == NULL) return -1;
    Py_ssize_t n;
    const char *digits = PyUnicode_AsUTF8AndSize(text, &n);
    int result = digits == NULL ? -1 : put_sized(o, 'I', digits, n);
    Py_DECREF(text);
    return result;
}

static int put_value(Buf *o, PyObject *value, int depth) {
    if (depth > MAX_NESTING) {
        PyErr_SetString(PyExc_ValueError, "record nested too deeply for the exporter pipe");
        return -1;
    }
    if (value == Py_None) return grow(o, 1) < 0 ? -1 : (o->data[o->len++] = 'N', 0);
    if (value == Py_True) return grow(o, 1) < 0 ? -1 : (o->data[o->len++] = 'T', 0);
    if (value == Py_False) return grow(o, 1) < 0 ? -1 : (o->data[o->len++] = 'F', 0);
    if (PyUnicode_Check(value)) {
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(value, &n);
        return utf8 == NULL ? -1 : put_sized(o, 's', utf8, n);
    }
    if (PyBytes_Check(value)) return put_sized(o, 'b', PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
    if (PyByteArray_Check(value))
        return put_sized(o, 'b', PyByteArray_AS_STRING(value), PyByteArray_GET_SIZE(value));
    if (PyLong_Check(value)) return put_int(o, value);
    if (PyFloat_Check(value)) return put_double(o, PyFloat_AS_DOUBLE(value));
    if (PyTuple_Check(value)) return put_items(o, 't', value, depth);
    if (PyList_Check(value)) return put_items(o, 'l', value, depth);
    if (PyDict_Check(value)) {
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        if (put_tag_u32(o, 'D', PyDict_GET_SIZE(value)) < 0) return -1;
        while (PyDict_Next(value, &pos, &key, &item)) {
            if (put_value(o, key, depth + 1) < 0 || put_value(o, item, depth + 1) < 0) return -1;
        }
        return 0;
    }
    PyErr_Format(PyExc_TypeError, "a call record cannot hold a %.100s", Py_TYPE(value)->tp_name);
    return -1;
}

static Buf scratch;
/* The buffer of `pack` and `pack_call`, kept between calls (the GIL is held throughout; no Python code
 * runs while it is filled). */

static PyObject *take(Buf *o, int status) {
    PyObject *packed = status == 0 ? PyBytes_FromStringAndSize(o->data, o->len) : NULL;
    o->len = 0;
    if (o->cap > (1 << 20)) {  /* a batch once packed whole: do not keep its size */
        PyMem_Free(o->data);
        *o = (Buf){0};
    }
    return packed;
}

PyObject *records_pack(PyObject *module, PyObject *value) {
    (void)module;
    return take(&scratch, put_value(&scratch, value, 0));
}

/* ---- pack_call ---- */

static PyObject *n_started, *n_auth_started, *n_auth_finished, *n_token_id, *n_error_code, *n_upstream_started,
    *n_upstream_finished, *n_provider, *n_model, *n_request_body, *k_stream, *k_response_body, *k_ttfb,
    *k_usage_known, *k_input, *k_output, *k_cached, *k_reasoning, *k_cost, *k_method, *k_path, *k_status,
    *k_request_id, *k_project_id, *k_token_id, *k_cache_status, *k_error_code, *s_error;

int records_init(void) {
    struct { PyObject **slot; const char *text; } names[] = {
        {&n_started, "started"}, {&n_auth_started, "auth_started"}, {&n_auth_finished, "auth_finished"},
        {&n_token_id, "token_id"}, {&n_error_code, "error_code"}, {&n_upstream_started, "upstream_started"},
        {&n_upstream_finished, "upstream_finished"}, {&n_provider, "provider"}, {&n_model, "model"},
        {&n_request_body, "request_body"}, {&k_stream, "stream"}, {&k_response_body, "response_body"},
        {&k_ttfb, "time_to_first_byte"}, {&k_usage_known, "usage_known"}, {&k_input, "input_tokens"},
        {&k_output, "output_tokens"}, {&k_cached, "cached_tokens"}, {&k_reasoning, "reasoning_tokens"},
        {&k_cost, "cost_usd"}, {&k_method, "method"}, {&k_path, "path"}, {&k_status, "status"},
        {&k_request_id, "request_id"}, {&k_project_id, "project_id"}, {&k_token_id, "token_id"},
        {&k_cache_status, "cache_status"}, {&k_error_code, "error_code"}, {&s_error, "error"},
    };
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (*names[i].slot == NULL && (*names[i].slot = PyUnicode_InternFromString(names[i].text)) == NULL) return -1;
    }
    return 0;
}

/* A borrowed item of a dict that must hold it (KeyError otherwise, as `md["stream"]` raises). */
static PyObject *item(PyObject *dict, PyObject *key) {
    PyObject *value = PyDict_GetItemWithError(dict, key);
    if (value == NULL && !PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
    return value;
}

typedef struct {
    PyObject *ctx;
    long long end;
    double now, started; /* time.time_ns() and time.monotonic() as the call ended; ctx.started */
} Clock;

/* `end - int((now - reading) * 1e9)`: a monotonic reading as ns since the epoch. */
static int epoch_ns(const Clock *clock, PyObject *reading, long long *out) {
    double value = PyFloat_AsDouble(reading);
    if (value == -1.0 && PyErr_Occurred()) return -1;
    *out = clock->end - (long long)((clock->now - value) * 1e9);
    return 0;
}

/* A span's start and end (the call's end when `finish` is None), the end never before the start. */
static int put_span_times(Buf *o, const Clock *clock, PyObject *start, PyObject *finish) {
    long long start_ns, end_ns = clock->end;
    if (epoch_ns(clock, start, &start_ns) < 0 || (finish != Py_None && epoch_ns(clock, finish, &end_ns) < 0))
        return -1;
    if (put_fixed(o, 'i', (uint64_t)start_ns) < 0) return -1;
    return put_fixed(o, 'i', (uint64_t)(end_ns > start_ns ? end_ns : start_ns));
}

static int put_auth(Buf *o, const Clock *clock) {
    PyObject *started = PyObject_GetAttr(clock->ctx, n_auth_started);
    PyObject *finished = started == NULL ? NULL : PyObject_GetAttr(clock->ctx, n_auth_finished);
    PyObject *token = finished == NULL ? NULL : PyObject_GetAttr(clock->ctx, n_token_id);
    PyObject *code = token == NULL ? NULL : PyObject_GetAttr(clock->ctx, n_error_code);
    int result = -1;
    if (code != NULL) {
        if (started == Py_None) {
            result = put_value(o, Py_None, 1);
        } else if (put_tag_u32(o, 't', 3) == 0 && put_span_times(o, clock, started, finished) == 0) {
            int has_code = PyObject_IsTrue(code);
            result = has_code < 0 ? -1 : put_value(o, token != Py_None ? Py_None : has_code ? code : s_error, 1);
        }
    }
    Py_XDECREF(started);
    Py_XDECREF(finished);
    Py_XDECREF(token);
    Py_XDECREF(code);
    return result;
}

/* The CLIENT span's part: (start, end, provider, model, seconds to the first chunk of a stream). */
static int put_upstream(Buf *o, const Clock *clock, PyObject *m, PyObject *upstream_started, int streamed) {
    PyObject *finished = PyObject_GetAttr(clock->ctx, n_upstream_finished);
    PyObject *provider = finished == NULL ? NULL : PyObject_GetAttr(clock->ctx, n_provider);
    PyObject *model = provider == NULL ? NULL : PyObject_GetAttr(clock->ctx, n_model);
    PyObject *ttfb = model == NULL ? NULL : item(m, k_ttfb);
    int result = -1;
    if (ttfb != NULL && put_tag_u32(o, 't', 5) == 0 && put_span_times(o, clock, upstream_started, finished) == 0
        && put_value(o, provider, 1) == 0 && put_value(o, model, 1) == 0) {
        if (streamed && ttfb != Py_None) {
            double first = clock->started + PyFloat_AsDouble(ttfb) - PyFloat_AsDouble(upstream_started);
            result = PyErr_Occurred() ? -1 : put_double(o, first);
        } else {
            result = put_value(o, Py_None, 1);
        }
    }
    Py_XDECREF(finished);
    Py_XDECREF(provider);
    Py_XDECREF(model);
    return result;
}

static int put_from(Buf *o, PyObject *dict, PyObject *const *keys, int count) {
    for (int i = 0; i < count; i++) {
        PyObject *value = item(dict, keys[i]);
        if (value == NULL || put_value(o, value, 1) < 0) return -1;
    }
    return 0;
}

static int put_usage(Buf *o, PyObject *m, PyObject *md) {
    PyObject *known = item(md, k_usage_known);
    int has_usage = known == NULL ? -1 : PyObject_IsTrue(known);
    if (has_usage <= 0) return has_usage < 0 ? -1 : put_value(o, Py_None, 1);
    PyObject *const keys[4] = {k_input, k_output, k_cached, k_reasoning};
    return put_tag_u32(o, 't', 4) < 0 ? -1 : put_from(o, m, keys, 4);
}

/* The record's fields after the span times and parts: children to bodies (see Tracing._record). */
static int put_outcome(Buf *o, PyObject *trace, PyObject *m, PyObject *md, PyObject *stream, PyObject *request,
                       PyObject *response) {
    PyObject *children = PyTuple_GET_ITEM(trace, 4);
    if (!PyList_Check(children)) {
        PyErr_SetString(PyExc_TypeError, "the call's trace must end with its list of child spans");
        return -1;
    }
    PyObject *const keys[6] = {k_status, k_request_id, k_project_id, k_token_id, k_cache_status, k_error_code};
    if (put_items(o, 't', children, 1) < 0 || put_from(o, md, keys, 6) < 0 || put_usage(o, m, md) < 0) return -1;
    PyObject *cost = item(m, k_cost);
    if (cost == NULL || put_value(o, cost, 1) < 0 || put_value(o, stream, 1) < 0) return -1;
    if (put_value(o, request, 1) < 0 || put_value(o, response, 1) < 0) return -1;
    return put_value(o, Py_None, 1);
}

static int put_call(Buf *o, Clock *clock, PyObject *trace, PyObject *m, PyObject *md, PyObject *stream,
                    PyObject *upstream_started, PyObject *request, PyObject *response, int streamed) {
    PyObject *const head[2] = {k_method, k_path};
    long long started_ns;
    PyObject *started = PyObject_GetAttr(clock->ctx, n_started);
    clock->started = started == NULL ? -1.0 : PyFloat_AsDouble(started);
    int failed = started == NULL || epoch_ns(clock, started, &started_ns) < 0;
    Py_XDECREF(started);
    if (failed || put_tag_u32(o, 't', 22) < 0) return -1;
    for (int i = 0; i < 3; i++) {
        if (put_value(o, PyTuple_GET_ITEM(trace, i), 1) < 0) return -1;
    }
    if (put_from(o, md, head, 2) < 0 || put_fixed(o, 'i', (uint64_t)started_ns) < 0
        || put_fixed(o, 'i', (uint64_t)clock->end) < 0 || put_auth(o, clock) < 0)
        return -1;
    if (upstream_started == Py_None ? put_value(o, Py_None, 1) < 0
                                    : put_upstream(o, clock, m, upstream_started, streamed) < 0)
        return -1;
    return put_outcome(o, trace, m, md, stream, request, response);
}

PyObject *records_pack_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "pack_call(ctx, trace, m, md, end_ns, now, max_deferred_body)");
        return NULL;
    }
    PyObject *trace = args[1], *m = args[2], *md = args[3];
    if (!PyTuple_Check(trace) || PyTuple_GET_SIZE(trace) != 5 || !PyDict_Check(m) || !PyDict_Check(md)) {
        PyErr_SetString(PyExc_TypeError, "pack_call: the trace is a 5-tuple, measurements and metadata dicts");
        return NULL;
    }
    Clock clock = {.ctx = args[0], .end = PyLong_AsLongLong(args[4]), .now = PyFloat_AsDouble(args[5])};
    Py_ssize_t max_deferred = PyLong_AsSsize_t(args[6]);
    PyObject *stream = PyErr_Occurred() ? NULL : item(md, k_stream);
    if (stream == NULL) return NULL;
    PyObject *upstream_started = PyObject_GetAttr(clock.ctx, n_upstream_started);
    PyObject *request = PyBytes_FromStringAndSize(NULL, 0), *response = Py_XNewRef(request), *packed = NULL;
    int streamed = 0, status = -1;
    if (upstream_started != NULL && request != NULL) {
        status = 0;
        if (upstream_started != Py_None) {
            streamed = PyObject_IsTrue(stream);
            Py_SETREF(request, PyObject_GetAttr(clock.ctx, n_request_body));
            PyObject *body = streamed ? NULL : PyDict_GetItemWithError(md, k_response_body);
            if (body != NULL) Py_SETREF(response, Py_NewRef(body));
            Py_ssize_t request_size = request == NULL ? -1 : PyObject_Length(request);
            Py_ssize_t response_size = PyObject_Length(response);
            if (streamed < 0 || PyErr_Occurred() || request_size < 0 || response_size < 0) status = -1;
            else if (request_size > max_deferred || response_size > max_deferred) status = 1;
        }
    }
    if (status == 0) {
        packed = take(&scratch, put_call(&scratch, &clock, trace, m, md, stream, upstream_started, request,
                                         response, streamed));
    } else if (status == 1) {
        packed = Py_NewRef(Py_None);  /* a large body: Tracing._record reads it now */
    }
    Py_XDECREF(upstream_started);
    Py_XDECREF(request);
    Py_XDECREF(response);
    return packed;
}

/* ---- unpack ---- */

typedef struct {
    const unsigned char *p, *end;
} In;

static int need(In *in, Py_ssize_t n) {
    if (in->end - in->p >= n) return 0;
    PyErr_SetString(PyExc_ValueError, "truncated call records");
    return -1;
}

static uint64_t read_le(const unsigned char *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static Py_ssize_t read_u32(In *in) {
    if (need(in, 4) < 0) return -1;
    Py_ssize_t n = (Py_ssize_t)read_le(in->p, 4);
    in->p += 4;
    return n;
}

static PyObject *read_value(In *in, int depth);

static PyObject *read_items(In *in, char tag, int depth) {
    Py_ssize_t n = read_u32(in);
    if (n < 0 || need(in, n) < 0) return NULL; /* every item takes at least its tag byte */
    PyObject *items = tag == 't' ? PyTuple_New(n) : PyList_New(n);
    if (items == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = read_value(in, depth + 1);
        if (item == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        if (tag == 't') PyTuple_SET_ITEM(items, i, item);
        else PyList_SET_ITEM(items, i, item);
    }
    return items;
}

static PyObject *read_dict(In *in, int depth) {
    Py_ssize_t n = read_u32(in);
    if (n < 0) return NULL;
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; dict != NULL && i < n; i++) {
        PyObject *key = read_value(in, depth + 1);
        PyObject *value = key == NULL ? NULL : read_value(in, depth + 1);
        if (value == NULL || PyDict_SetItem(dict, key, value) < 0) Py_CLEAR(dict);
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    return dict;
}

static PyObject *read_sized(In *in, char tag) {
    Py_ssize_t n = read_u32(in);
    if (n < 0 || need(in, n) < 0) return NULL;
    const char *at = (const char *)in->p;
    in->p += n;
    if (tag == 's') return PyUnicode_DecodeUTF8(at, n, "strict");
    if (tag == 'b') return PyBytes_FromStringAndSize(at, n);
    PyObject *digits = PyUnicode_FromStringAndSize(at, n);
    if (digits == NULL) return NULL;
    PyObject *value = PyLong_FromUnicodeObject(digits, 10);
    Py_DECREF(digits);
    return value;
}

static PyObject *read_value(In *in, int depth) {
    if (depth > MAX_NESTING) {
        PyErr_SetString(PyExc_ValueError, "call records nested too deeply");
        return NULL;
    }
    if (need(in, 1) < 0) return NULL;
    char tag = (char)*in->p++;
    switch (tag) {
    case 'N': Py_RETURN_NONE;
    case 'T': Py_RETURN_TRUE;
    case 'F': Py_RETURN_FALSE;
    case 'i':
    case 'd': {
        if (need(in, 8) < 0) return NULL;
        uint64_t bits = read_le(in->p, 8);
        const char *raw = (const char *)in->p;
        in->p += 8;
        return tag == 'i' ? PyLong_FromLongLong((long long)bits) : PyFloat_FromDouble(PyFloat_Unpack8(raw, 1));
    }
    case 's':
    case 'b':
    case 'I': return read_sized(in, tag);
    case 't':
    case 'l': return read_items(in, tag, depth);
    case 'D': return read_dict(in, depth);
    default: PyErr_Format(PyExc_ValueError, "unknown tag %d in call records", (int)(unsigned char)tag); return NULL;
    }
}

PyObject *records_unpack(PyObject *module, PyObject *data) {
    (void)module;
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return NULL;
    In in = {.p = view.buf, .end = (const unsigned char *)view.buf + view.len};
    PyObject *values = PyList_New(0);
    while (values != NULL && in.p < in.end) {
        PyObject *value = read_value(&in, 0);
        if (value == NULL || PyList_Append(values, value) < 0) Py_CLEAR(values);
        Py_XDECREF(value);
    }
    PyBuffer_Release(&view);
    return values;
}
