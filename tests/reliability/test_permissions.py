"""Permission bits, checked by a child process that is not root.

Root reads and writes any file, so a test that made a folder unreadable or a store read-only
and ran as root (containers, CI) could only skip. These run the check in a child that drops to
user ``nobody`` (``run_unprivileged`` in tests/conftest.py), so they hold whoever runs the suite.
Each has a control: the same child does reach what it may read, so a denial is the permission
bit at work, not a path it cannot see at all.
"""

from __future__ import annotations

import hashlib

import numpy as np

from featurebank.extractor import FeatureStore
from featurebank.spec import FeatureSpec, ModelSpec


def _touch(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")


def test_unreadable_folder_is_skipped_by_collect(unprivileged_dir, run_unprivileged):
    root = unprivileged_dir / "data"
    for rel in ["cat/a.jpeg", "cat/deep/c.png", "dog/y.bmp", "dog/z.webp", "loose.png"]:
        _touch(root / rel)
    for d in [root, *root.rglob("*")]:
        d.chmod(0o755 if d.is_dir() else 0o644)
    code = ("from featurebank.extractor import collect\n"
            "print(sorted({i.label for i in collect([sys.argv[1]])}))\n")
    readable = run_unprivileged(code, root)  # control: the child sees the whole tree
    assert readable.returncode == 0, readable.stderr[-1500:]
    assert readable.stdout.strip() == "['', 'cat', 'dog']"
    (root / "dog").chmod(0)
    locked = run_unprivileged(code, root)
    assert locked.returncode == 0, locked.stderr[-1500:]
    assert locked.stdout.strip() == "['', 'cat']"


def test_read_only_store_gives_clear_error_and_keeps_data(unprivileged_dir, run_unprivileged):
    from sklearn.datasets import load_digits

    d = load_digits()
    keys = [hashlib.sha256(row.tobytes()).hexdigest() for row in d.images[:3]]
    spec = FeatureSpec(ModelSpec("efficientnet_lite0", "ab" * 32), "head", "avg")
    path = unprivileged_dir / "s.h5"
    with FeatureStore(path, mode="a") as s:
        s.add_rows(spec, keys, d.data[:3].astype(np.float32), [f"/d/{i}.png" for i in range(3)],
                   [str(t) for t in d.target[:3]])
    unprivileged_dir.chmod(0o777)  # the folder is writable (a lock file may be made): only the
    path.chmod(0o444)              # store's own bits forbid writing
    before = path.read_bytes()
    code = ("from featurebank.extractor import FeatureStore\n"
            "from featurebank.errors import FeaturebankError\n"
            "print(len(FeatureStore(sys.argv[1]).read().keys))\n"
            "try:\n    FeatureStore(sys.argv[1], mode='a').__enter__(); print('opened for writing')\n"
            "except FeaturebankError as e:\n    print('error:', e)\n")
    out = run_unprivileged(code, path)
    assert out.returncode == 0, out.stderr[-1500:]
    count, message = out.stdout.splitlines()[:2]
    assert count == "3"  # readable: the control
    assert message.startswith("error:") and "read-only" in message and "s.h5" in message, message
    assert path.read_bytes() == before
