"""raysemi: semi-supervised semantic segmentation (RWMS, UCC) orchestrated with Ray."""

__version__ = "0.1.0"
