"""OOD metrics (scikit-learn) and the studies: likelihood comparison, the chicken post."""
