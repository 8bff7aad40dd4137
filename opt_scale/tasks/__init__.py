"""Pretext tasks: their heads, losses and the module that combines them."""
