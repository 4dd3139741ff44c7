"""Document filters for the curate stage."""
