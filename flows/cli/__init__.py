"""The ``stemloop`` command: ``main`` parses, the modules beside it run each command."""
