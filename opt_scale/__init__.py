"""opt-scale: distributed pre-training of OPT-style omni-perception models."""

__version__ = "0.1.0"
