"""``pointillist node start`` whose checkpoint family detection and shipped configs are a test's.

A single-file checkpoint of real SD shapes is gigabytes; the tiny-width checkpoints of
tests/test_single_file.py keep the real key names but cannot pass the real shape checks (covered
by tests/test_checkpoint_family.py from real shapes). This launcher points the loader at the
tiny-width copy of the shipped config folders (``POINTILLIST_TEST_CONFIGS``) and reports the family
``POINTILLIST_TEST_FAMILY`` for every ``.safetensors`` file; the rest of the node is the product's.
Usage: ``python tests/family_node.py <node start arguments>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pointillist.node import checkpoint_family, loading

_configs = Path(os.environ["POINTILLIST_TEST_CONFIGS"])
_family = checkpoint_family.FAMILIES[os.environ["POINTILLIST_TEST_FAMILY"]]
loading.shipped_configs_path = lambda: _configs
loading.detect_family = lambda path: checkpoint_family.Detection(_family, "set by tests/family_node.py")

if __name__ == "__main__":
    from pointillist.cli.main import main

    sys.exit(main(["node", "start", *sys.argv[1:]]))
