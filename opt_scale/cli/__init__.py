"""Command-line entry points (each a thin layer over the library)."""
