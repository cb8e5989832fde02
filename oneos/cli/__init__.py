"""The ``oneos`` command: host-side tools (status, grid, configure, psd, ...)."""
