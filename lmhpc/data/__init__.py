"""Documents and the readers, writers and quarantine every data stage shares."""
