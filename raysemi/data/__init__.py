"""Data layer: the items every layer speaks (items.py, importing nothing of raysemi), dataset layouts
(datasets.py), split files (splits.py), augmentations (transforms.py, cutmix.py, copy_paste.py), the
students' unlabeled streams (pseudo_stream.py, ucc_views.py), a synthetic dataset, the CamVid download.
Import from the modules; this file imports nothing, so reading a split or an item stays light."""
