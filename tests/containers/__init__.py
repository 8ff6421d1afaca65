"""The containers layer: the images on podman (see conftest.py)."""
