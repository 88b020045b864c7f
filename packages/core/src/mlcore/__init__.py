"""mlcore."""
