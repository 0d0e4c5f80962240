"""The package version, in a leaf module that anything may import (the package root imports backends)."""

__version__ = "0.1.0"
