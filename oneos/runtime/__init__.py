"""The runtime: one per machine; membership, election, kernel services."""
