/* Protobuf writing for the span encoder: a growing buffer, varints, length-delimited fields filled in
 * afterwards, and the OTLP `Span` pieces the encoder joins (see _spans.c). */
#ifndef LLM_PROXY_PROTOBUF_H
#define LLM_PROXY_PROTOBUF_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *data;
    Py_ssize_t len, cap;
} Buf;

static inline int grow(Buf *b, Py_ssize_t extra) {
    if (b->len + extra <= b->cap) return 0;
    Py_ssize_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    char *data = PyMem_Realloc(b->data, (size_t)cap);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->cap = cap;
    return 0;
}

static inline int put(Buf *b, const void *bytes, Py_ssize_t n) {
    if (grow(b, n) < 0) return -1;
    memcpy(b->data + b->len, bytes, (size_t)n);
    b->len += n;
    return 0;
}

static inline int put_byte(Buf *b, unsigned char c) { return put(b, &c, 1); }

static inline int varint_size(uint64_t v) {
    int n = 1;
    while (v > 0x7F) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline void write_varint(char *at, uint64_t v) {
    while (v > 0x7F) {
        *at++ = (char)((v & 0x7F) | 0x80);
        v >>= 7;
    }
    *at = (char)v;
}

static inline int put_varint(Buf *b, uint64_t v) {
    int n = varint_size(v);
    if (grow(b, n) < 0) return -1;
    write_varint(b->data + b->len, v);
    b->len += n;
    return 0;
}

/* A length-delimited field: `begin` after its tag, `finish` once its payload is written. */
static inline Py_ssize_t begin(Buf *b) { return b->len; }

int put_fixed64(Buf *b, unsigned char tag, uint64_t v);

int finish(Buf *b, Py_ssize_t mark);

int put_field(Buf *b, unsigned char tag, const char *bytes, Py_ssize_t n);

int put_str_field(Buf *b, unsigned char tag, PyObject *text);

int put_bytes_object(Buf *b, PyObject *value);

/* An `AnyValue`, as otlp.any_value: booleans before ints, anything else as its str(). */
int put_any_value(Buf *b, PyObject *value);

/* A `Span.attributes` entry (field 9) whose value is an array or another object: nested, length prefixes
 * filled in afterwards. */
int put_attribute_nested(Buf *b, const char *key, Py_ssize_t key_len, PyObject *value);

/* A `Span.attributes` entry (field 9). With `skip_none`, None gives nothing (AttributeFields.field);
 * without it None is written as "None" (otlp.attribute). Scalars, the common case, are sized first and
 * written in one pass. */
int put_attribute(Buf *b, const char *key, Py_ssize_t key_len, PyObject *value, int skip_none);

#define ATTRIBUTE(b, key, value, skip_none) \
    put_attribute((b), (key), (Py_ssize_t)(sizeof(key) - 1), (value), (skip_none))

int put_named_attribute(Buf *b, PyObject *key, PyObject *value, int skip_none);

int put_times(Buf *b, PyObject *start, PyObject *end);

/* Status (ERROR, or left unset) and flags, as otlp.span_tail. */
int put_tail(Buf *b, int error, int remote_parent);

/* A span's name (field 5) and kind (field 6). */
int put_name_kind(Buf *b, PyObject *name, int kind);

/* A span's name "<first> <second>" (f"{first} {second}") and its kind, without building the str. */
int put_joined_name_kind(Buf *b, PyObject *first, PyObject *second, int kind);

/* The start of a span: its ScopeSpans entry tag, trace id and span id (otlp.span_lead). */
Py_ssize_t begin_span(Buf *b, const char *trace_id, const char *span_id, Py_ssize_t span_id_len);

int put_trace_state(Buf *b, PyObject *trace_state);

/* Trace state and parent of the server span's children. */
int put_child_of(Buf *b, PyObject *trace_state, const char *server_id);

#endif
