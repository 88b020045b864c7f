"""roofseg (work in progress)."""
