"""The package version (its own module, so that any layer can record it without importing the
package's top level)."""

__version__ = "0.1.0"
