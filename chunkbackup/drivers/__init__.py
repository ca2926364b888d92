"""Storage drivers: each names things and moves object bytes, nothing more."""
