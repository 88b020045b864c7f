"""videogen (work in progress)."""
