"""The network's secrets: broker credentials (``credentials.json``) and join tokens."""
