"""The built-in plugins of bench: ordinary plugins using the public hooks."""
