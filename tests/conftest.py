"""Fixtures shared by every area: a hermetic environment, real photos, the exported default model.

Every test runs with a per-session model cache and a temporary home, whatever it asks for
(:func:`_hermetic`), so no test reads or writes the user's ``~/.cache/featurebank`` and a test
run alone on a fresh machine finds what the whole suite would. The session cache is seeded from
a persistent folder, ``$FEATUREBANK_TEST_CACHE`` (default ``.pytest_cache/featurebank-models``;
set it to an empty folder to start cold), and what the session exports is copied back there.
Seeding is safe because every cache entry is keyed by what made it: exports by model, weights,
input size, version and the exporter's code digest; optimised and int8 graphs by content digest.

Area-specific fixtures stay in the area's own test modules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from benchmarks.harness.faults import subprocess_env

# Keep each test process from oversubscribing the 2 cores when several libraries spin threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534  # uid and gid of the unprivileged user the permission tests drop to


def _persistent_cache() -> Path | None:
    chosen = os.environ.get("FEATUREBANK_TEST_CACHE", str(REPO / ".pytest_cache" / "featurebank-models"))
    return Path(chosen) if chosen else None


def _sync(src: Path, dst: Path) -> None:
    """Copy files of ``src`` missing from ``dst`` (recursively), each renamed into place."""
    for f in src.rglob("*"):
        if not f.is_file() or f.suffix == ".lock" or f.name.startswith("."):
            continue
        target = dst / f.relative_to(src)
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        tmp.unlink(missing_ok=True)  # left by a session that died here
        try:
            try:
                os.link(f, tmp)  # same file system: no copy
            except OSError:
                shutil.copyfile(f, tmp)
        except FileNotFoundError:  # pruned by a concurrent session meanwhile
            continue
        os.replace(tmp, target)


def _prune(cache: Path, keep: int = 3) -> None:
    """Keep the ``keep`` newest exports of each model (each exporter change keys a new one)."""
    by_model: dict[str, list[Path]] = {}
    for f in cache.glob("*.onnx"):
        by_model.setdefault(f.name.rsplit("-", 1)[0], []).append(f)
    for files in by_model.values():
        for old in sorted(files, key=lambda f: f.stat().st_mtime, reverse=True)[keep:]:
            old.unlink(missing_ok=True)
            Path(str(old) + ".lock").unlink(missing_ok=True)


@pytest.fixture(scope="session", autouse=True)
def _hermetic(tmp_path_factory) -> dict[str, str]:
    """FEATUREBANK_CACHE and HOME point into this session's temporary folder for every test."""
    cache = tmp_path_factory.mktemp("featurebank-cache")
    home = tmp_path_factory.mktemp("home")
    persistent = _persistent_cache()
    if persistent is not None and persistent.is_dir():
        _sync(persistent, cache)
    saved = {k: os.environ.get(k) for k in ("FEATUREBANK_CACHE", "HOME")}
    os.environ.update(FEATUREBANK_CACHE=str(cache), HOME=str(home))
    yield {"FEATUREBANK_CACHE": str(cache), "HOME": str(home)}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if persistent is not None:
        persistent.mkdir(parents=True, exist_ok=True)
        _sync(cache, persistent)  # the next session starts warm
        _prune(persistent)


@pytest.fixture(scope="session")
def model_cache(_hermetic) -> Path:
    """This session's cache of exported models (exports are the slow part)."""
    return Path(_hermetic["FEATUREBANK_CACHE"])


@pytest.fixture
def unprivileged_dir():
    """A fresh folder every user can traverse (pytest's own tmp folders are root-only 0700),
    for files a child that dropped to user ``nobody`` must reach."""
    folder = Path(tempfile.mkdtemp(prefix="fb-unpriv-"))
    folder.chmod(0o755)
    yield folder
    for f in folder.rglob("*"):  # give back what a test locked, so it can be removed
        f.chmod(0o755 if f.is_dir() else 0o644)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def run_unprivileged():
    """Run Python ``code`` (argv: ``args``) in a child that is not root.

    As root (containers, CI) permission bits bind no one, so the child imports featurebank,
    Pillow and h5py first (this interpreter lives under /root, unreadable to ``nobody``), then
    drops to uid/gid 65534 and runs ``code``. As another user the child just runs ``code``.
    Returns the CompletedProcess; the child prints what the test asserts on.
    """
    prelude = ("import os, sys\n"
               "import featurebank.extractor, featurebank.extractor.store, PIL.Image, h5py\n"
               "PIL.Image.init()  # every format plugin, while the interpreter can read them\n"
               "# the packages load their public names lazily: load them now, while readable\n"
               "for _m in (featurebank.extractor, featurebank.extractor.store):\n"
               "    [getattr(_m, _n) for _n in _m.__all__]\n"
               f"if os.geteuid() == 0:\n    os.setgroups([]); os.setgid({NOBODY}); os.setuid({NOBODY})\n"
               "assert os.geteuid() != 0\n")

    def run(code: str, *args, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)],
                              capture_output=True, text=True, timeout=timeout, env=subprocess_env(),
                              cwd=tempfile.gettempdir())

    return run


@pytest.fixture(scope="session")
def lite0_onnx(model_cache) -> Path:
    """The default model exported to ONNX (through the cache, as users get it)."""
    from featurebank.export import ensure_exported

    return Path(ensure_exported("efficientnet_lite0", cache_dir=model_cache))


@pytest.fixture(scope="session")
def real_photos() -> dict[str, np.ndarray]:
    """Real RGB photos (uint8 HxWx3) with the ImageNet class a person expects."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    names = [Path(f).stem for f in sample.filenames]
    photos = dict(zip(names, sample.images, strict=True))  # china (temple), flower
    photos["chelsea"] = data.chelsea()  # a tabby cat
    photos["coffee"] = data.coffee()  # a cup of coffee
    photos["astronaut"] = data.astronaut()
    photos["rocket"] = data.rocket()
    return photos


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory, real_photos) -> Path:
    """The real photos written as JPEG files in an ImageFolder layout (label = sub-folder)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("photos")
    for i, (name, arr) in enumerate(sorted(real_photos.items())):
        label = "animal" if name in ("chelsea",) else "scene" if i % 2 else "object"
        (root / label).mkdir(exist_ok=True)
        Image.fromarray(arr).save(root / label / f"{name}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """scikit-learn's digits (real handwritten 8x8 scans) as PNGs in an ImageFolder layout."""
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for i, (img, label) in enumerate(zip(d.images, d.target, strict=True)):
        folder = root / str(label)
        folder.mkdir(exist_ok=True)
        px = (img * (255.0 / 16.0)).astype(np.uint8)
        Image.fromarray(px, mode="L").save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3 endpoint on the loopback address (moto's server mode), one per session, with
    the AWS environment pointing at it (fake credentials); stopped at the end of the session.

    fsspec caches S3 filesystems by their arguments, not the environment: tests that change the
    environment clear that cache (``s3fs.S3FileSystem.clear_instance_cache()``)."""
    pytest.importorskip("s3fs", reason="S3 inputs need the io extra")
    moto_server = pytest.importorskip("moto.server", reason="needs moto[server] (dev extra)")
    import s3fs

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        yield env["AWS_ENDPOINT_URL"]
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A new, empty bucket on the session's S3 endpoint: ``(fs, name)``."""
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem()
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name
