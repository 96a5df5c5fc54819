/* Call records packed for the pipe to the exporter process (see _records.c). */
#ifndef LLM_PROXY_RECORDS_H
#define LLM_PROXY_RECORDS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

PyObject *records_pack(PyObject *module, PyObject *value);
PyObject *records_unpack(PyObject *module, PyObject *data);
PyObject *records_pack_call(PyObject *module, PyObject *const *args, Py_ssize_t nargs);
int records_init(void);

#endif
