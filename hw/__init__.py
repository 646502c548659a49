"""hw: see README.md."""
