"""Surrogate models: coarse-grained force fields, conformer screening and reaction paths with
neural potentials."""
