"""Pure ASGI middleware: each wraps `receive`/`send` of the app it is given."""
