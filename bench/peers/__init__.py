"""Peers that dockhand is measured against (see bench/README.md)."""
