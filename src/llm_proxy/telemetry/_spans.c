/* The OTLP spans of one proxied call, encoded in C: the same bytes as call_spans.CallEncoder.
 *
 * The exporter process spends most of its CPU time turning call records into protobuf; on a
 * small machine that time is taken from the proxy workers. This module does the same work as
 * the pure-Python encoder (which stays the reference, the fallback where this does not build,
 * and the encoder when message content is captured) without building intermediate byte strings:
 * one growing buffer per encoder, length prefixes filled in when a nested message ends. The
 * field order is exactly the Python encoder's, so the tests compare the two byte for byte.
 */
#include "_bodies.h"
#include "_protobuf.h"
#include "_records.h"

#include <stdint.h>
#include <string.h>

#define RECORD_FIELDS 22

typedef struct {
    PyObject_HEAD
    Buf buf;
    PyObject *server_address, *server_port, *cache_write_name;
    PyObject *operations, *providers, *loads, *decode_error;
    Parameters request_parameters;
    BodyNames body_names;
} Encoder;

/* Interned keys looked up in parsed bodies and written as attribute names. */
static PyObject *s_response_id, *s_response_model, *s_finish_reasons, *s_input_messages, *s_output_messages,
    *s_auth;

static int is_truthy(PyObject *value) { return value != Py_None && PyObject_IsTrue(value) == 1; }

static int put_server_span(Buf *b, PyObject *const *r, const char *ids) {
    PyObject *method = r[3], *path = r[4], *status = r[10], *error_code = r[15], *parent = r[1];
    long code = PyLong_AsLong(status);
    if (code == -1 && PyErr_Occurred()) return -1;
    Py_ssize_t span = begin_span(b, ids, ids + 16, 8);
    if (span < 0 || put_times(b, r[5], r[6]) < 0 || put_trace_state(b, r[2]) < 0) return -1;
    int remote = is_truthy(parent);
    if (remote && (put(b, "\x22\x08", 2) < 0 || put_bytes_object(b, parent) < 0)) return -1;
    if (put_joined_name_kind(b, method, path, 2) < 0 || ATTRIBUTE(b, "http.request.method", method, 1) < 0
        || ATTRIBUTE(b, "url.path", path, 1) < 0 || ATTRIBUTE(b, "http.response.status_code", status, 1) < 0
        || ATTRIBUTE(b, "llm_proxy.project_id", r[12], 1) < 0 || ATTRIBUTE(b, "llm_proxy.token_id", r[13], 1) < 0
        || ATTRIBUTE(b, "llm_proxy.cache_status", r[14], 1) < 0)
        return -1;
    int error = code >= 500 || (code >= 400 && is_truthy(error_code));
    if (error) {
        PyObject *type = is_truthy(error_code) ? Py_NewRef(error_code) : PyObject_Str(status);
        if (type == NULL) return -1;
        int failed = ATTRIBUTE(b, "error.type", type, 1);
        Py_DECREF(type);
        if (failed) return -1;
    }
    if (put_tail(b, error, remote) < 0 || ATTRIBUTE(b, "llm_proxy.request_id", r[11], 0) < 0) return -1;
    if (r[17] != Py_None && ATTRIBUTE(b, "llm_proxy.cost_usd", r[17], 0) < 0) return -1;
    return finish(b, span);
}

static int unpack(PyObject *value, Py_ssize_t size, PyObject *const **items, const char *what) {
    if (!PyTuple_Check(value) || PyTuple_GET_SIZE(value) != size) {
        PyErr_Format(PyExc_TypeError, "call record: %s must be a tuple of %zd", what, size);
        return -1;
    }
    *items = &PyTuple_GET_ITEM(value, 0);
    return 0;
}

static int put_auth_span(Buf *b, PyObject *auth, const char *ids, PyObject *trace_state) {
    PyObject *const *a;
    if (unpack(auth, 3, &a, "auth") < 0) return -1;
    Py_ssize_t span = begin_span(b, ids, ids + 32, 8);
    if (span < 0 || put_times(b, a[0], a[1]) < 0 || put_child_of(b, trace_state, ids + 16) < 0
        || put_name_kind(b, s_auth, 1) < 0 || ATTRIBUTE(b, "error.type", a[2], 1) < 0
        || put_tail(b, a[2] != Py_None, 0) < 0)
        return -1;
    return finish(b, span);
}

static int put_child_span(Buf *b, PyObject *child, const char *ids, PyObject *trace_state) {
    PyObject *const *c;
    if (unpack(child, 6, &c, "child span") < 0) return -1;
    if (!PyBytes_Check(c[1])) {
        PyErr_SetString(PyExc_TypeError, "call record: a child's span id must be bytes");
        return -1;
    }
    Py_ssize_t span = begin_span(b, ids, PyBytes_AS_STRING(c[1]), PyBytes_GET_SIZE(c[1]));
    if (span < 0 || put_times(b, c[2], c[3]) < 0 || put_child_of(b, trace_state, ids + 16) < 0
        || put_name_kind(b, c[0], 1) < 0)
        return -1;
    PyObject *pairs = PySequence_Fast(c[5], "call record: child attributes must be a sequence");
    if (pairs == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(pairs); i++) {
        PyObject *const *pair;
        if (unpack(PySequence_Fast_GET_ITEM(pairs, i), 2, &pair, "child attribute") < 0
            || put_named_attribute(b, pair[0], pair[1], 1) < 0) {
            Py_DECREF(pairs);
            return -1;
        }
    }
    Py_DECREF(pairs);
    if (c[4] != Py_None && ATTRIBUTE(b, "error.type", c[4], 1) < 0) return -1;
    if (put_tail(b, c[4] != Py_None, 0) < 0) return -1;
    return finish(b, span);
}

/* The CLIENT span's attributes read from the bodies, merged over those the worker read early: a dict, or
 * None when there are none. */
static PyObject *client_attributes(Encoder *self, PyObject *const *r) {
    PyObject *early = r[21];
    int has_bodies = is_truthy(r[19]) || is_truthy(r[20]);
    if (!has_bodies && (early == Py_None || PyDict_CheckExact(early))) return Py_NewRef(early);
    PyObject *found = PyDict_New();
    if (found == NULL) return NULL;
    if (is_truthy(early) && PyDict_Update(found, early) < 0) goto error;
    if (has_bodies && (request_body_attributes(&self->request_parameters, &self->body_names, found, r[19]) < 0
                       || response_body_attributes(&self->body_names, found, r[20]) < 0))
        goto error;
    return found;
error:
    Py_DECREF(found);
    return NULL;
}

static int is_space(PyObject *text, Py_ssize_t at) {
    return Py_UNICODE_ISSPACE(PyUnicode_READ_CHAR(text, at));
}

/* The CLIENT span's name and kind: f"{operation} {model or ''}".strip() for GenAI paths, else
 * "<method> <path>"; written directly unless there is whitespace to strip. */
static int put_client_name_kind(Buf *b, PyObject *operation, PyObject *method, PyObject *path, PyObject *model) {
    if (operation == NULL) return put_joined_name_kind(b, method, path, 3);
    int has_model = is_truthy(model);
    if (PyUnicode_CheckExact(operation) && PyUnicode_GET_LENGTH(operation) && !is_space(operation, 0)) {
        if (!has_model && !is_space(operation, PyUnicode_GET_LENGTH(operation) - 1))
            return put_name_kind(b, operation, 3);
        if (has_model && PyUnicode_CheckExact(model) && !is_space(model, PyUnicode_GET_LENGTH(model) - 1))
            return put_joined_name_kind(b, operation, model, 3);
    }
    PyObject *joined = has_model ? PyUnicode_FromFormat("%S %S", operation, model)
                                 : PyUnicode_FromFormat("%S ", operation);
    if (joined == NULL) return -1;
    PyObject *name = PyObject_CallMethod(joined, "strip", NULL);
    Py_DECREF(joined);
    if (name == NULL) return -1;
    int result = put_name_kind(b, name, 3);
    Py_DECREF(name);
    return result;
}

static int put_client_head(Encoder *self, Buf *b, PyObject *const *r, PyObject *const *u) {
    PyObject *method = r[3], *path = r[4], *status = r[10], *provider = u[2], *model = u[3];
    PyObject *operation = PyDict_GetItemWithError(self->operations, path);
    if (operation == NULL && PyErr_Occurred()) return -1;
    if (put_client_name_kind(b, operation, method, path, model) < 0) return -1;
    PyObject *provider_name = PyDict_GetItemWithError(self->providers, provider);
    if (provider_name == NULL && PyErr_Occurred()) return -1;
    if (ATTRIBUTE(b, "server.address", self->server_address, 1) < 0
        || ATTRIBUTE(b, "server.port", self->server_port, 1) < 0
        || ATTRIBUTE(b, "gen_ai.provider.name", provider_name ? provider_name : provider, 1) < 0
        || ATTRIBUTE(b, "gen_ai.request.stream", r[18], 1) < 0
        || (operation != NULL && ATTRIBUTE(b, "gen_ai.operation.name", operation, 1) < 0)
        || (is_truthy(model) && ATTRIBUTE(b, "gen_ai.request.model", model, 1) < 0)
        || ATTRIBUTE(b, "http.response.status_code", status, 1) < 0)
        return -1;
    long code = PyLong_AsLong(status);
    if (code == -1 && PyErr_Occurred()) return -1;
    if (code >= 400) {
        PyObject *type = PyObject_Str(status);
        if (type == NULL) return -1;
        int failed = ATTRIBUTE(b, "error.type", type, 1);
        Py_DECREF(type);
        if (failed) return -1;
    }
    return put_tail(b, code >= 400, 0);
}

static int put_usage(Buf *b, PyObject *usage) {
    PyObject *const *n;
    if (usage == Py_None) return 0;
    if (unpack(usage, 4, &n, "usage") < 0) return -1;
    return ATTRIBUTE(b, "gen_ai.usage.input_tokens", n[0], 1) < 0
        || ATTRIBUTE(b, "gen_ai.usage.output_tokens", n[1], 1) < 0
        || ATTRIBUTE(b, "gen_ai.usage.cache_read.input_tokens", n[2], 1) < 0
        || ATTRIBUTE(b, "gen_ai.usage.reasoning.output_tokens", n[3], 1) < 0 ? -1 : 0;
}

static int put_first_chunk(Buf *b, PyObject *first_chunk) {
    if (first_chunk == Py_None) return 0;
    PyObject *zero = PyFloat_FromDouble(0.0);
    if (zero == NULL) return -1;
    int below = PyObject_RichCompareBool(zero, first_chunk, Py_GT);  /* max(first_chunk, 0.0) */
    int result = below < 0 ? -1 : ATTRIBUTE(b, "gen_ai.response.time_to_first_chunk", below ? zero : first_chunk, 0);
    Py_DECREF(zero);
    return result;
}

static int is_unique_key(PyObject *key) {
    if (key == s_response_id || key == s_input_messages || key == s_output_messages) return 1;
    if (!PyUnicode_Check(key)) return 0;
    Py_ssize_t n = PyUnicode_GET_LENGTH(key);
    return (n == PyUnicode_GET_LENGTH(s_response_id) && PyUnicode_Compare(key, s_response_id) == 0)
        || (n == PyUnicode_GET_LENGTH(s_input_messages) && PyUnicode_Compare(key, s_input_messages) == 0)
        || (n == PyUnicode_GET_LENGTH(s_output_messages) && PyUnicode_Compare(key, s_output_messages) == 0);
}

/* The attributes read from the bodies (a dict or None); those that never repeat (otlp.attribute, not cached)
 * write None as "None", the others leave it out. */
static int put_found(Buf *b, PyObject *found) {
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (found != Py_None && PyDict_Next(found, &pos, &key, &value)) {
        if (put_named_attribute(b, key, value, !is_unique_key(key)) < 0) return -1;
    }
    return 0;
}

static int put_client_span(Encoder *self, Buf *b, PyObject *const *r, const char *ids) {
    PyObject *const *u;
    if (unpack(r[8], 5, &u, "upstream") < 0) return -1;
    Py_ssize_t span = begin_span(b, ids, ids + 24, 8);
    if (span < 0 || put_times(b, u[0], u[1]) < 0 || put_child_of(b, r[2], ids + 16) < 0
        || put_client_head(self, b, r, u) < 0 || put_usage(b, r[16]) < 0 || put_first_chunk(b, u[4]) < 0)
        return -1;
    PyObject *found = client_attributes(self, r);
    if (found == NULL) return -1;
    int failed = put_found(b, found);
    Py_DECREF(found);
    return failed ? -1 : finish(b, span);
}

static int put_call(Encoder *self, Buf *b, PyObject *record) {
    PyObject *const *r;
    if (unpack(record, RECORD_FIELDS, &r, "a queued record") < 0) return -1;
    if (!PyBytes_Check(r[0]) || PyBytes_GET_SIZE(r[0]) != 40) {
        PyErr_SetString(PyExc_ValueError, "call record: ids must be 40 bytes");
        return -1;
    }
    const char *ids = PyBytes_AS_STRING(r[0]);
    if (put_server_span(b, r, ids) < 0) return -1;
    if (r[7] != Py_None && put_auth_span(b, r[7], ids, r[2]) < 0) return -1;
    PyObject *children = PySequence_Fast(r[9], "call record: children must be a sequence");
    if (children == NULL) return -1;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(children); i++) {
        if (put_child_span(b, PySequence_Fast_GET_ITEM(children, i), ids, r[2]) < 0) {
            Py_DECREF(children);
            return -1;
        }
    }
    Py_DECREF(children);
    return r[8] == Py_None ? 0 : put_client_span(self, b, r, ids);
}

static PyObject *Encoder_call(PyObject *op, PyObject *args, PyObject *kwargs) {
    Encoder *self = (Encoder *)op;
    PyObject *record;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) {
        PyErr_SetString(PyExc_TypeError, "the encoder takes one call record");
        return NULL;
    }
    if (!PyArg_UnpackTuple(args, "encode", 1, 1, &record)) return NULL;
    self->buf.len = 0;
    if (put_call(self, &self->buf, record) < 0) return NULL;
    return PyBytes_FromStringAndSize(self->buf.data, self->buf.len);
}

static int Encoder_init(PyObject *op, PyObject *args, PyObject *kwargs) {
    Encoder *self = (Encoder *)op;
    static char *names[] = {"server_address", "server_port", "cache_write_name", "operations", "providers",
                            "parameters", "loads", "decode_error", NULL};
    PyObject *address, *port, *cache_write, *operations, *providers, *parameters, *loads, *decode_error;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "UO!UO!O!O!OO", names, &address, &PyLong_Type, &port,
                                     &cache_write, &PyDict_Type, &operations, &PyDict_Type, &providers,
                                     &PyDict_Type, &parameters, &loads, &decode_error))
        return -1;
    Py_XSETREF(self->server_address, Py_NewRef(address));
    Py_XSETREF(self->server_port, Py_NewRef(port));
    Py_XSETREF(self->cache_write_name, Py_NewRef(cache_write));
    Py_XSETREF(self->operations, Py_NewRef(operations));
    Py_XSETREF(self->providers, Py_NewRef(providers));
    Py_XSETREF(self->loads, Py_NewRef(loads));
    Py_XSETREF(self->decode_error, Py_NewRef(decode_error));
    self->body_names = (BodyNames){.loads = self->loads, .decode_error = self->decode_error,
                                   .cache_write_name = self->cache_write_name, .response_id = s_response_id,
                                   .response_model = s_response_model, .finish_reasons = s_finish_reasons};
    return parameters_init(&self->request_parameters, parameters);
}

static int Encoder_traverse(PyObject *op, visitproc visit, void *arg) {
    Encoder *self = (Encoder *)op;
    Py_VISIT(self->server_address);
    Py_VISIT(self->server_port);
    Py_VISIT(self->cache_write_name);
    Py_VISIT(self->operations);
    Py_VISIT(self->providers);
    Py_VISIT(self->loads);
    Py_VISIT(self->decode_error);
    return 0;
}

static int Encoder_clear(PyObject *op) {
    Encoder *self = (Encoder *)op;
    Py_CLEAR(self->server_address);
    Py_CLEAR(self->server_port);
    Py_CLEAR(self->cache_write_name);
    Py_CLEAR(self->operations);
    Py_CLEAR(self->providers);
    Py_CLEAR(self->loads);
    Py_CLEAR(self->decode_error);
    parameters_clear(&self->request_parameters);
    return 0;
}

static void Encoder_dealloc(PyObject *op) {
    Encoder *self = (Encoder *)op;
    PyObject_GC_UnTrack(op);
    Encoder_clear(op);
    PyMem_Free(self->buf.data);
    Py_TYPE(op)->tp_free(op);
}

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "llm_proxy.telemetry._spans.Encoder",
    .tp_doc = PyDoc_STR("Encoder(server_address, server_port, cache_write_name, operations, providers, "
                        "parameters, loads, decode_error)(record) -> the call's spans, as CallEncoder without "
                        "captured content."),
    .tp_basicsize = sizeof(Encoder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_init = Encoder_init,
    .tp_call = Encoder_call,
    .tp_traverse = Encoder_traverse,
    .tp_clear = Encoder_clear,
    .tp_dealloc = Encoder_dealloc,
};

static PyMethodDef spans_functions[] = {
    {"pack", records_pack, METH_O,
     PyDoc_STR("pack(record) -> bytes: a call record (plain values, tuples, lists, dicts) for the exporter pipe.")},
    {"unpack", records_unpack, METH_O,
     PyDoc_STR("unpack(data) -> the list of values packed one after another in data.")},
    {"pack_call", (PyCFunction)(void (*)(void))records_pack_call, METH_FASTCALL,
     PyDoc_STR("pack_call(ctx, trace, m, md, end_ns, now, max_deferred_body) -> the packed record of a call "
               "(Tracing._record's, bodies left to the exporter), or None when a body is too large to defer.")},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef spans_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_spans", .m_methods = spans_functions,
    .m_doc = PyDoc_STR("The OTLP spans of a proxied call, encoded in C (see call_spans.CallEncoder)."),
    .m_size = -1,
};

static int intern_all(void) {
    struct { PyObject **slot; const char *text; } strings[] = {
        {&s_response_id, "gen_ai.response.id"}, {&s_response_model, "gen_ai.response.model"},
        {&s_finish_reasons, "gen_ai.response.finish_reasons"}, {&s_input_messages, "gen_ai.input.messages"},
        {&s_output_messages, "gen_ai.output.messages"}, {&s_auth, "llm_proxy.auth"},
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        if (*strings[i].slot == NULL && (*strings[i].slot = PyUnicode_InternFromString(strings[i].text)) == NULL)
            return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__spans(void) {
    if (intern_all() < 0 || records_init() < 0 || PyType_Ready(&EncoderType) < 0) return NULL;
    PyObject *module = PyModule_Create(&spans_module);
    if (module == NULL) return NULL;
    if (PyModule_AddObjectRef(module, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
