"""subpop-bench: a benchmark of defenses against subpopulation data poisoning."""
__version__ = "0.1.0"
