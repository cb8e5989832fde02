"""MongoDB-wire fixtures (filled in by the file-system work)."""
