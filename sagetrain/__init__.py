"""The `sagetrain` command (the composition root) and, later, the Python client."""
