"""The text side: class lists (with synonyms and the official file formats), prompt templates, and the cached
text classifier."""
from .classes import ClassList, parse_classes
from .encoder import encode_queries
from .templates import load_templates

__all__ = ["ClassList", "parse_classes", "encode_queries", "load_templates"]
