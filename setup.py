"""Builds the optional C span encoder; where it cannot be built, the pure-Python encoder is used.

Project metadata is in pyproject.toml; only the extension module is declared here.
"""

from setuptools import Extension, setup

TELEMETRY = "src/llm_proxy/telemetry"

setup(ext_modules=[Extension(
    "llm_proxy.telemetry._spans", [f"{TELEMETRY}/_spans.c", f"{TELEMETRY}/_bodies.c"],
    depends=[f"{TELEMETRY}/_bodies.h"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-missing-field-initializers"])])
