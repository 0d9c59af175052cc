"""LoveDA benchmark utilities."""
