"""Benchmarks users run: ``python -m flashspike.benchmarks.neuron --help``."""
