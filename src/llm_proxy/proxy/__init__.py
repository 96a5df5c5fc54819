"""Data plane: the /v1/* pass-through."""
