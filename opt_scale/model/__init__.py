"""The OPT model, composed from named parts (see :mod:`.registry`)."""
