"""Operators shared by the backbones."""
from .selective_scan import selective_scan, selective_scan_map

__all__ = ["selective_scan", "selective_scan_map"]
