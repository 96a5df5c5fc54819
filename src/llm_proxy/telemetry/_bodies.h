/* The GenAI attributes of a call's request and response bodies, read by a scanner that builds no objects
 * but the values it keeps (see _bodies.c). */
#ifndef LLM_PROXY_BODIES_H
#define LLM_PROXY_BODIES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define MAX_PARAMETERS 32

typedef struct {
    int count;
    const char *names[MAX_PARAMETERS];   /* request keys, UTF-8, owned by `keys` */
    Py_ssize_t lengths[MAX_PARAMETERS];
    PyObject *keys[MAX_PARAMETERS];      /* the request keys, kept alive for `names` */
    PyObject *attributes[MAX_PARAMETERS];
} Parameters;

typedef struct {
    PyObject *loads, *decode_error, *cache_write_name;
    PyObject *response_id, *response_model, *finish_reasons;
} BodyNames;

/* Fill `parameters` from the dict {request key: attribute name}; -1 with an exception set on failure. */
int parameters_init(Parameters *parameters, PyObject *mapping);
void parameters_clear(Parameters *parameters);

/* Add to `found` what call_spans.document_attributes would for the request and response bodies (bytes or
 * bytearray), in the same order and with the same values. 0, or -1 with an exception set. */
int request_body_attributes(const Parameters *parameters, const BodyNames *names, PyObject *found, PyObject *body);
int response_body_attributes(const BodyNames *names, PyObject *found, PyObject *body);

#endif
