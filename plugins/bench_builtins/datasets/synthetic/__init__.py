"""The procedural CLEVR-like renderer behind the `synthetic` dataset."""
