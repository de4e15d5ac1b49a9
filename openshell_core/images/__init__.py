"""Offline image builds: the Debian base image, the wheelhouse, and the gateway/sandbox images."""

from __future__ import annotations

from openshell_core.images.base import BaseImageSpec, ensure_base_image
from openshell_core.images.builder import ImageSet, ensure_images
from openshell_core.images.cache import cache_dir
from openshell_core.images.wheelhouse import Wheelhouse, ensure_wheelhouse

__all__ = [
    "BaseImageSpec",
    "ImageSet",
    "Wheelhouse",
    "cache_dir",
    "ensure_base_image",
    "ensure_images",
    "ensure_wheelhouse",
]
