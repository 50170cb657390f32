"""OOD scores: pure functions of cached per-sample statistics; higher = more OOD."""
