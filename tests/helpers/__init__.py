"""Test helpers with public names: networks (one ``small_unet``), engines (a tiny trainer), synthetic bundles
(``bundle_fixture``, ``zoo_structures``, ``repo_bundles``), DICOM studies and codecs, the spheres and 3-class tasks.
Tests import them as ``from helpers.<module> import <name>``; ``conftest.py`` holds fixtures only."""
