"""``opt-bench``: throughput and memory benchmarks that print figures.

Each subcommand lives in its own module exposing ``add_arguments(parser)``
and ``run(args) -> dict``; :mod:`.cli` lists them. Results carry the machine
description (:mod:`.machine`) and are printed as a table, written as JSON,
and optionally plotted (:mod:`.report`).
"""
