"""The model registry (registry.py), one architecture family per module, and the torch-free listing
(catalogue.py). Import from the submodules: this package imports nothing, so listing stays fast."""
