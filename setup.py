"""Builds the optional C extension of tracing (span encoder, record packing); without it the pure-Python code runs.

Project metadata is in pyproject.toml; only the extension module is declared here.
"""

from setuptools import Extension, setup

TELEMETRY = "src/llm_proxy/telemetry"

setup(ext_modules=[Extension(
    "llm_proxy.telemetry._spans",
    [f"{TELEMETRY}/{name}.c" for name in ("_spans", "_protobuf", "_bodies", "_records")],
    depends=[f"{TELEMETRY}/{name}.h" for name in ("_protobuf", "_bodies", "_records")], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
