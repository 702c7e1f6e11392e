"""The throughput, roofline and memory benchmark (`python -m lopt.bench`).

`run` plans the cases and writes the JSON, `cases` builds and times each one
in its own subprocess, `family` benches a task family through the
production step, and `measure` holds the hardware ceilings (matmul peak,
memory bandwidth) and the bytes one inner step must move.
"""
