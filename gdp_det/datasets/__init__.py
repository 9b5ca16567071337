"""Data sets of the package: the procedural toy VOC set (:mod:`.toy_voc`) that the demo,
the toy configs and the tests train on. Not imported by ``import gdp_det``."""
