"""The ``modserve`` command: one entry point above the packages it dispatches to."""
