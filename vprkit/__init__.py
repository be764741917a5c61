"""vprkit: visual place recognition with stored descriptor databases."""

__version__ = "0.1.0"
