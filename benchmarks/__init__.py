"""Cost and speed measurements of the heads (see benchmarks/README.md); not part of the library."""
