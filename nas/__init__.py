"""cellsearch: neural architecture search over recurrent cells."""

__version__ = "0.1.0"
