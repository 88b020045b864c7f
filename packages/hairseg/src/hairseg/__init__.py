"""hairseg."""
