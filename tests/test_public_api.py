"""The redesign (issue 19) kept every public name where users import it: ``tests/data/public_api_before_redesign.json``
lists each module's public top-level names (functions, classes, constants, and a package's re-exports) as they
were at commit 54fac78, before the packages were split; every one must still import from the same module path."""

import importlib
import json
import os

import pytest

SNAPSHOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "public_api_before_redesign.json")
with open(SNAPSHOT) as f:
    API = json.load(f)


def test_the_snapshot_is_the_whole_package():
    assert len(API) > 60 and sum(map(len, API.values())) > 400
    assert {"search", "compress_bundle"} <= set(API["monai_prune.search"] + API["monai_prune.bundle"])


@pytest.mark.parametrize("module", sorted(API))
def test_every_public_name_still_imports_from_its_module(module):
    imported = importlib.import_module(module)
    assert [name for name in API[module] if not hasattr(imported, name)] == []
