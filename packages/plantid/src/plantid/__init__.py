"""plantid (work in progress)."""
