"""nfields: neural fields and 3D reconstruction, from a laptop CPU to a GPU."""

__version__ = "0.1.0"
