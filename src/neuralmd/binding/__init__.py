"""Binding free energies: host–guest systems, the funnel, binding CVs, runs and analysis."""
