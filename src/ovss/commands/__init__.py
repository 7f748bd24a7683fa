"""Sub-commands of the `ovss` CLI, one module each (see ovss.cli)."""
