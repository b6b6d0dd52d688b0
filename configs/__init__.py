"""The YAML configs shipped with the toolkit (the repository's configs/ folder)."""
