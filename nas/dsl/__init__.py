"""The search-space language: grammar, parser, syntax tree (knows nothing else)."""

from .parser import parse_expr, parse_file, parse_text, read_space_text

__all__ = ["parse_expr", "parse_file", "parse_text", "read_space_text"]
