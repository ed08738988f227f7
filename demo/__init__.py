"""Sample data and the `./run demo` entry point (python -m demo); not part of the installed reconciler package."""
