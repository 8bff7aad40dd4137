"""opt-scale: distributed pre-training of OPT-style omni-perception models."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `opt_scale.load` / `opt_scale.OPT` without importing torch on `import opt_scale`.
    if name in ("load", "OPT"):
        from opt_scale import api
        return getattr(api, name)
    raise AttributeError(f"module 'opt_scale' has no attribute {name!r}")
