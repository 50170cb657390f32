"""dgmood: out-of-distribution detection with deep generative models.

Reproduces Nalisnick et al. 2019, "Do Deep Generative Models Know What They Don't Know?"
and benchmarks the OOD scores that came after it.
"""

__version__ = "0.1.0"
