"""firmware: see README.md."""
