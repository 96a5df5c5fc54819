/* Protobuf writing for the span encoder (see _protobuf.h). */
#include "_protobuf.h"

int put_fixed64(Buf *b, unsigned char tag, uint64_t v) {
    unsigned char out[9];
    out[0] = tag;
    for (int i = 0; i < 8; i++) out[1 + i] = (unsigned char)(v >> (8 * i));
    return put(b, out, 9);
}

int finish(Buf *b, Py_ssize_t mark) {
    Py_ssize_t size = b->len - mark;
    int n = varint_size((uint64_t)size);
    if (grow(b, n) < 0) return -1;
    memmove(b->data + mark + n, b->data + mark, (size_t)size);
    write_varint(b->data + mark, (uint64_t)size);
    b->len += n;
    return 0;
}

int put_field(Buf *b, unsigned char tag, const char *bytes, Py_ssize_t n) {
    if (put_byte(b, tag) < 0 || put_varint(b, (uint64_t)n) < 0) return -1;
    return put(b, bytes, n);
}

int put_str_field(Buf *b, unsigned char tag, PyObject *text) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &n);
    return utf8 == NULL ? -1 : put_field(b, tag, utf8, n);
}

int put_bytes_object(Buf *b, PyObject *value) {
    if (!PyBytes_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "call record: ids must be bytes");
        return -1;
    }
    return put(b, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value));
}

int put_any_value(Buf *b, PyObject *value) {
    if (PyUnicode_Check(value)) return put_str_field(b, 0x0a, value);
    if (PyBool_Check(value)) return put(b, value == Py_True ? "\x10\x01" : "\x10\x00", 2);
    if (PyLong_Check(value)) {
        unsigned long long v = PyLong_AsUnsignedLongLongMask(value);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        return put_byte(b, 0x18) < 0 ? -1 : put_varint(b, v);
    }
    if (PyFloat_Check(value)) {
        unsigned char out[9] = {0x21};
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (char *)out + 1, 1) < 0) return -1;
        return put(b, out, 9);
    }
    if (PyList_Check(value) || PyTuple_Check(value)) {
        PyObject *items = PySequence_Fast(value, "");
        if (items == NULL || put_byte(b, 0x2a) < 0) {
            Py_XDECREF(items);
            return -1;
        }
        Py_ssize_t array = begin(b);
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(items); i++) {
            Py_ssize_t item;
            if (put_byte(b, 0x0a) < 0 || (item = begin(b), put_any_value(b, PySequence_Fast_GET_ITEM(items, i)) < 0)
                || finish(b, item) < 0) {
                Py_DECREF(items);
                return -1;
            }
        }
        Py_DECREF(items);
        return finish(b, array);
    }
    PyObject *text = PyObject_Str(value);
    if (text == NULL) return -1;
    int result = put_str_field(b, 0x0a, text);
    Py_DECREF(text);
    return result;
}

int put_attribute_nested(Buf *b, const char *key, Py_ssize_t key_len, PyObject *value) {
    if (put_byte(b, 0x4a) < 0) return -1;
    Py_ssize_t entry = begin(b);
    if (put_field(b, 0x0a, key, key_len) < 0 || put_byte(b, 0x12) < 0) return -1;
    Py_ssize_t any = begin(b);
    if (put_any_value(b, value) < 0 || finish(b, any) < 0) return -1;
    return finish(b, entry);
}

int put_attribute(Buf *b, const char *key, Py_ssize_t key_len, PyObject *value, int skip_none) {
    if (value == Py_None && skip_none) return 0;
    unsigned char head[11];
    int head_len;
    const char *data = NULL;
    Py_ssize_t data_len = 0;
    if (PyUnicode_Check(value)) {
        if ((data = PyUnicode_AsUTF8AndSize(value, &data_len)) == NULL) return -1;
        head[0] = 0x0a;
        write_varint((char *)head + 1, (uint64_t)data_len);
        head_len = 1 + varint_size((uint64_t)data_len);
    } else if (PyBool_Check(value)) {
        head[0] = 0x10;
        head[1] = value == Py_True;
        head_len = 2;
    } else if (PyLong_Check(value)) {
        unsigned long long v = PyLong_AsUnsignedLongLongMask(value);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) return -1;
        head[0] = 0x18;
        write_varint((char *)head + 1, v);
        head_len = 1 + varint_size(v);
    } else if (PyFloat_Check(value)) {
        head[0] = 0x21;
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(value), (char *)head + 1, 1) < 0) return -1;
        head_len = 9;
    } else {
        return put_attribute_nested(b, key, key_len, value);
    }
    uint64_t any_len = (uint64_t)head_len + (uint64_t)data_len;
    uint64_t entry_len = 1 + (uint64_t)varint_size((uint64_t)key_len) + (uint64_t)key_len + 1
                         + (uint64_t)varint_size(any_len) + any_len;
    if (grow(b, 1 + varint_size(entry_len) + (Py_ssize_t)entry_len) < 0) return -1;
    char *at = b->data + b->len;
    *at++ = 0x4a;
    write_varint(at, entry_len);
    at += varint_size(entry_len);
    *at++ = 0x0a;
    write_varint(at, (uint64_t)key_len);
    at += varint_size((uint64_t)key_len);
    memcpy(at, key, (size_t)key_len);
    at += key_len;
    *at++ = 0x12;
    write_varint(at, any_len);
    at += varint_size(any_len);
    memcpy(at, head, (size_t)head_len);
    at += head_len;
    if (data_len) memcpy(at, data, (size_t)data_len);
    at += data_len;
    b->len = at - b->data;
    return 0;
}

int put_named_attribute(Buf *b, PyObject *key, PyObject *value, int skip_none) {
    Py_ssize_t n;
    const char *utf8 = PyUnicode_AsUTF8AndSize(key, &n);
    return utf8 == NULL ? -1 : put_attribute(b, utf8, n, value, skip_none);
}

int put_times(Buf *b, PyObject *start, PyObject *end) {
    unsigned long long s = PyLong_AsUnsignedLongLong(start);
    if (s == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    unsigned long long e = PyLong_AsUnsignedLongLong(end);
    if (e == (unsigned long long)-1 && PyErr_Occurred()) return -1;
    return put_fixed64(b, 0x39, s) < 0 ? -1 : put_fixed64(b, 0x41, e);
}

int put_tail(Buf *b, int error, int remote_parent) {
    if (error && put(b, "\x7a\x02\x18\x02", 4) < 0) return -1;
    return put(b, remote_parent ? "\x85\x01\x01\x03\x00\x00" : "\x85\x01\x01\x01\x00\x00", 6);
}

int put_name_kind(Buf *b, PyObject *name, int kind) {
    if (put_str_field(b, 0x2a, name) < 0) return -1;
    unsigned char out[2] = {0x30, (unsigned char)kind};
    return put(b, out, 2);
}

int put_joined_name_kind(Buf *b, PyObject *first, PyObject *second, int kind) {
    if (!PyUnicode_CheckExact(first) || !PyUnicode_CheckExact(second)) {
        PyObject *name = PyUnicode_FromFormat("%S %S", first, second);
        if (name == NULL) return -1;
        int result = put_name_kind(b, name, kind);
        Py_DECREF(name);
        return result;
    }
    Py_ssize_t n1, n2;
    const char *s1 = PyUnicode_AsUTF8AndSize(first, &n1), *s2 = PyUnicode_AsUTF8AndSize(second, &n2);
    if (s1 == NULL || s2 == NULL || put_byte(b, 0x2a) < 0 || put_varint(b, (uint64_t)(n1 + 1 + n2)) < 0
        || put(b, s1, n1) < 0 || put_byte(b, ' ') < 0 || put(b, s2, n2) < 0)
        return -1;
    unsigned char out[2] = {0x30, (unsigned char)kind};
    return put(b, out, 2);
}

Py_ssize_t begin_span(Buf *b, const char *trace_id, const char *span_id, Py_ssize_t span_id_len) {
    if (put_byte(b, 0x12) < 0) return -1;
    Py_ssize_t mark = begin(b);
    if (put(b, "\x0a\x10", 2) < 0 || put(b, trace_id, 16) < 0 || put(b, "\x12\x08", 2) < 0
        || put(b, span_id, span_id_len) < 0)
        return -1;
    return mark;
}

int put_trace_state(Buf *b, PyObject *trace_state) {
    if (!PyUnicode_Check(trace_state)) {
        PyErr_SetString(PyExc_TypeError, "call record: trace state must be a str");
        return -1;
    }
    return PyUnicode_GET_LENGTH(trace_state) ? put_str_field(b, 0x1a, trace_state) : 0;
}

int put_child_of(Buf *b, PyObject *trace_state, const char *server_id) {
    if (put_trace_state(b, trace_state) < 0 || put(b, "\x22\x08", 2) < 0) return -1;
    return put(b, server_id, 8);
}
