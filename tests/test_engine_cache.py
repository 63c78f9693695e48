"""The engine cache: reuse when valid, rebuild when stale, truncated or unloadable."""

from __future__ import annotations

import json

import pytest

from live_puppet.backends.cache import EngineCache, content_hash, make_key


class Counter:
    """A `write` that records how often it was called and writes a known payload."""

    def __init__(self, payload: bytes = b"engine-bytes" * 100):
        self.payload = payload
        self.calls = 0

    def __call__(self, path):
        self.calls += 1
        path.write_bytes(self.payload)


def read(path):
    return path.read_bytes()


def test_second_lookup_reuses_the_engine(tmp_path):
    cache, write = EngineCache(tmp_path), Counter()
    first, cached1 = cache.get_or_build("k1", ".onnx", write, read)
    second, cached2 = cache.get_or_build("k1", ".onnx", write, read)
    assert (cached1, cached2) == (False, True)
    assert first == second == write.payload
    assert write.calls == 1
    meta = json.loads((tmp_path / "k1.json").read_text())
    assert meta["size"] == len(write.payload)


def test_truncated_file_is_detected_and_rebuilt(tmp_path):
    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)
    engine = tmp_path / "k1.onnx"
    engine.write_bytes(engine.read_bytes()[:100])  # a copy cut short
    assert cache.validate(cache.entry("k1", ".onnx")).startswith("size")
    said = []
    out, cached = cache.get_or_build("k1", ".onnx", write, read, on_rebuild=said.append)
    assert not cached and write.calls == 2 and out == write.payload
    assert len(said) == 1 and "k1.onnx is damaged (size 100 bytes" in said[0]  # the user is told why


def test_same_size_corruption_is_detected(tmp_path):
    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)
    engine = tmp_path / "k1.onnx"
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))
    assert cache.lookup("k1", ".onnx") is None
    assert not engine.exists()  # the damaged file is removed


def test_missing_sidecar_means_stale(tmp_path):
    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)
    (tmp_path / "k1.json").unlink()
    _, cached = cache.get_or_build("k1", ".onnx", write, read)
    assert not cached and write.calls == 2


def test_unloadable_file_is_rebuilt_once(tmp_path):
    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)
    loads = []

    def picky_load(path):
        loads.append(path)
        if len(loads) == 1:
            raise RuntimeError("runtime refuses this file")
        return "loaded"

    messages = []
    out, cached = cache.get_or_build("k1", ".onnx", write, picky_load, on_rebuild=messages.append)
    assert out == "loaded" and not cached and write.calls == 2
    assert len(messages) == 1 and "rebuilding" in messages[0]


def test_failed_build_leaves_nothing_behind(tmp_path):
    cache = EngineCache(tmp_path)

    def broken(path):
        path.write_bytes(b"half")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        cache.build("k1", ".onnx", broken)
    assert list(tmp_path.iterdir()) == []


def test_prune_keeps_the_most_recent(tmp_path):
    import os
    import time

    cache = EngineCache(tmp_path, keep=10)
    now = time.time()
    for i in range(4):
        cache.build(f"k{i}", ".onnx", Counter())
        os.utime(tmp_path / f"k{i}.json", (now - 100 + i, now - 100 + i))
    cache.lookup("k0", ".onnx")  # a use makes k0 the most recent
    cache.keep = 2
    cache.prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k0.json", "k0.onnx", "k3.json", "k3.onnx"]


def test_key_depends_on_every_field(tmp_path):
    base = {"checkpoint_sha256": "a", "resolution": 256, "backend": "onnxruntime",
            "precision": "fp32", "versions": {"torch": "2.13.0"}, "device": "cpu"}
    keys = {make_key(base)}
    for field, other in [("checkpoint_sha256", "b"), ("resolution", 128), ("backend", "tensorrt"),
                         ("precision", "fp16"), ("versions", {"torch": "2.14.0"}), ("device", "RTX")]:
        keys.add(make_key({**base, field: other}))
    assert len(keys) == 7
    assert make_key(dict(reversed(list(base.items())))) == make_key(base)


def test_content_hash_follows_the_file(tmp_path):
    f = tmp_path / "ck.safetensors"
    f.write_bytes(b"one")
    h1 = content_hash(f)
    f.write_bytes(b"two, longer")
    assert content_hash(f) != h1


def test_a_read_only_engine_folder_is_used_as_it_is(tmp_path, monkeypatch):
    """A shared install: the engines are there, but their use cannot be marked."""
    import os

    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "utime", read_only)
    out, cached = cache.get_or_build("k1", ".onnx", write, read)
    assert cached and write.calls == 1


def test_engines_and_their_sidecars_get_a_plain_file_s_permissions(tmp_path):
    """mkstemp makes 0600 files: a shared engines/ folder would work for their owner only."""
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    cache, write = EngineCache(tmp_path), Counter()
    cache.get_or_build("k1", ".onnx", write, read)
    for f in (tmp_path / "k1.onnx", next(tmp_path.glob("k1.*json*"))):
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.fixture
def signing_key_in(tmp_path, monkeypatch):
    """This user's signing secret in a temporary folder (not the real user data folder)."""
    from live_puppet.backends import cache

    key_path = tmp_path / "user-data" / "engine-signing.key"
    monkeypatch.setattr(cache, "signing_key_path", lambda: key_path)
    monkeypatch.setattr(cache, "_SIGNING_KEY", [])
    return key_path


def test_an_engine_that_runs_code_is_loaded_only_when_this_user_signed_it(tmp_path, signing_key_in):
    import os

    # TensorRT's engine files hold pickles, unpickled on loading: a file someone else put in a
    # shared engines/ folder, with a sidecar whose size and sha256 match it, must not be loaded.
    engines = tmp_path / "engines"
    cache, write = EngineCache(engines), Counter()
    _, cached = cache.get_or_build("k1", ".ep", write, read, signed=True)
    _, cached = cache.get_or_build("k1", ".ep", write, read, signed=True)
    assert cached and write.calls == 1  # this user's own engine is reused
    if os.name == "posix":
        assert signing_key_in.stat().st_mode & 0o777 == 0o600

    # another user's file, with a matching size and hash but no signature of ours
    import hashlib

    evil = b"pickled code" * 100
    (engines / "k1.ep").write_bytes(evil)
    sidecar = engines / "k1.json"
    meta = json.loads(sidecar.read_text())
    meta.update(size=len(evil), sha256=hashlib.sha256(evil).hexdigest(), signature="0" * 64)
    sidecar.write_text(json.dumps(meta))
    loaded, said = [], []
    out, cached = cache.get_or_build("k1", ".ep", write, lambda p: loaded.append(p.read_bytes()) or p,
                                     on_rebuild=said.append, signed=True)
    assert not cached and write.calls == 2 and evil not in loaded
    assert len(said) == 1 and "no valid signature of yours" in said[0]
    # an engine that runs no code (ONNX) needs no signature
    plain = EngineCache(tmp_path / "plain")
    plain.get_or_build("k2", ".onnx", Counter(), read)
    assert "signature" not in json.loads((tmp_path / "plain" / "k2.json").read_text())
    _, cached = plain.get_or_build("k2", ".onnx", Counter(), read)
    assert cached


def test_a_signed_engine_swapped_after_its_check_is_not_loaded(tmp_path, signing_key_in, monkeypatch):
    # Someone who can write a shared engines/ folder replaces the file between its check and its
    # loading: what is loaded is a private copy whose own bytes were checked.
    cache, write = EngineCache(tmp_path / "engines"), Counter()
    cache.get_or_build("k1", ".ep", write, read, signed=True)
    evil = b"pickled code" * 100
    lookup = EngineCache.lookup

    def swap_after_check(self, key, suffix, **kw):
        path = lookup(self, key, suffix, **kw)
        if path is not None:
            path.write_bytes(evil)
        return path

    monkeypatch.setattr(EngineCache, "lookup", swap_after_check)
    loaded = []
    _, cached = cache.get_or_build("k1", ".ep", write, lambda p: loaded.append(p.read_bytes()) or p,
                                   signed=True)
    assert evil not in loaded and not cached and write.calls == 2


def test_a_damaged_signing_key_is_replaced_and_each_key_has_its_own_engines(tmp_path, signing_key_in):
    from live_puppet.backends import cache
    from live_puppet.backends.tensorrt_backend import TensorRTBackend

    assert TensorRTBackend.loads_code  # its engines are signed (torch.export archives hold pickles)
    signing_key_in.parent.mkdir(parents=True)
    signing_key_in.write_bytes(b"")  # a crash between making the file and writing it
    first = cache.signer()
    assert len(signing_key_in.read_bytes()) == cache.KEY_BYTES
    cache._SIGNING_KEY.clear()
    assert cache.signer() == first  # the next run reads the same key
    cache._SIGNING_KEY[:] = [b"another user's key".ljust(32, b".")]
    assert cache.signer() != first  # another user: other cache keys for their engines


def test_the_signing_key_is_kept_without_hard_links_and_said_when_it_cannot_be(tmp_path, signing_key_in,
                                                                               monkeypatch, capsys):
    import errno
    import os

    from live_puppet.backends import cache

    def no_links(*args):  # FAT, some network shares
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    first = cache.signer()
    assert len(signing_key_in.read_bytes()) == cache.KEY_BYTES and first != "unkept"
    cache._SIGNING_KEY.clear()
    assert cache.signer() == first  # kept: the next run signs alike
    # nowhere to keep it: said once, and this run's engines keep one name (rebuilt in place next time)
    cache._SIGNING_KEY.clear()
    monkeypatch.setattr(cache, "signing_key_path", lambda: tmp_path / "a file" / "key")
    (tmp_path / "a file").write_text("in the way")
    monkeypatch.setattr(cache, "_KEY_KEPT", [True])
    assert cache.signer() == "unkept" and cache.signer() == "unkept"
    assert capsys.readouterr().err.count("could not keep the engine signing key") == 1
