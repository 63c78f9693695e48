"""The `neural` engine end to end on a real portrait, with a tiny random-weight checkpoint."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from conftest import PORTRAITS, need
from live_puppet.errors import UserError
from live_puppet.model import Embedder, Generator, ModelConfig
from live_puppet.render import create_engine
from live_puppet.training.checkpoint import Checkpoint, save_checkpoint
from live_puppet.types import Target


def tiny_config() -> ModelConfig:
    return ModelConfig(image_size=64, base_channels=8, max_channels=16, embed_dim=16,
                       generator_down_blocks=2, generator_res_blocks=1, attention_resolution=16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tiny_config()
    g = Generator(cfg)
    with torch.no_grad():
        g.projection.normal_(0, 0.3)
    path = tmp_path_factory.mktemp("ck") / "tiny.safetensors"
    save_checkpoint(path, Checkpoint(config=cfg, generator=g, embedder=Embedder(cfg)))
    return path


@pytest.fixture(scope="module")
def portrait(image_tracker):
    from live_puppet.portrait import load_portrait

    return load_portrait(need(PORTRAITS / "bouguereau_girl.jpg"), image_tracker, max_side=512)


def target_for(portrait, dy: float = 4.0) -> Target:
    lm = portrait.face.landmarks.copy()
    lm[:, 1] += dy
    return Target(landmarks=lm, rotation=np.eye(3), scale=1.0, translation=np.zeros(3),
                  center=np.zeros(3))


def make(checkpoint, tmp_path, backend="onnxruntime"):
    return create_engine("neural", checkpoint=checkpoint, backend=backend, engine_dir=tmp_path,
                         progress=False, expression_gain=2.0)  # unknown options are ignored


def test_render_pastes_the_generated_face(checkpoint, portrait, tmp_path):
    engine = make(checkpoint, tmp_path)
    try:
        engine.prepare(portrait)
        assert np.array_equal(engine.render(portrait, None), portrait.image)
        out = engine.render(portrait, target_for(portrait))
        assert out.shape == portrait.image.shape and out.dtype == np.uint8
        x0, y0, x1, y1 = (int(v) for v in portrait.face.bbox())
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        face_diff = np.abs(out[cy - 5:cy + 5, cx - 5:cx + 5].astype(int)
                           - portrait.image[cy - 5:cy + 5, cx - 5:cx + 5]).mean()
        assert face_diff > 5  # the (random) generator's face replaced the painted one
        assert np.array_equal(out[:10, :10], portrait.image[:10, :10])  # far corner untouched
    finally:
        engine.close()


def test_engine_output_matches_the_unfolded_model(checkpoint, portrait, tmp_path):
    from live_puppet import sketch
    from live_puppet.backends.builder import array_to_bgr, rgb_to_tensor
    from live_puppet.backends.folding import compute_embedding
    from live_puppet.training.checkpoint import load_checkpoint

    engine = make(checkpoint, tmp_path)
    try:
        engine.prepare(portrait)
        inputs = engine.prepared(portrait).inputs
        target = target_for(portrait, 6.0)
        got = engine.generate(portrait, target.landmarks)
        ck = load_checkpoint(checkpoint)
        e_hat = compute_embedding(ck.embedder, rgb_to_tensor(inputs.crop_rgb),
                                  rgb_to_tensor(inputs.sketch_rgb))
        drawn = sketch.render_sketch(target.landmarks, inputs.box, ck.config.image_size)
        with torch.no_grad():
            ref = ck.generator(rgb_to_tensor(drawn), ck.generator.project(e_hat)).numpy()
        assert np.abs(got.astype(int) - array_to_bgr(ref).astype(int)).max() <= 1
    finally:
        engine.close()


def test_second_engine_reuses_the_cache_and_truncation_rebuilds(checkpoint, portrait, tmp_path):
    first = make(checkpoint, tmp_path)
    first.prepare(portrait)
    prepared = first.prepared(portrait)
    reference = first.render(portrait, target_for(portrait))
    first.close()
    assert not prepared.from_cache
    engine_file = tmp_path / f"{prepared.key}.onnx"
    assert engine_file.is_file() and (tmp_path / f"{prepared.key}.json").is_file()

    second = make(checkpoint, tmp_path)
    second.prepare(portrait)
    assert second.prepared(portrait).from_cache
    assert second.prepared(portrait).key == prepared.key
    assert np.array_equal(second.render(portrait, target_for(portrait)), reference)
    second.close()

    engine_file.write_bytes(engine_file.read_bytes()[: engine_file.stat().st_size // 3])
    third = make(checkpoint, tmp_path)
    third.prepare(portrait)
    assert not third.prepared(portrait).from_cache  # detected and rebuilt, no crash
    assert np.array_equal(third.render(portrait, target_for(portrait)), reference)
    third.close()


def test_unprepared_portrait_builds_in_background_without_blocking(checkpoint, portrait, tmp_path):
    engine = make(checkpoint, tmp_path, backend="torch")
    try:
        out = engine.render(portrait, target_for(portrait))  # returns at once, at rest
        assert np.array_equal(out, portrait.image)
        engine.prepare_async(portrait).result(timeout=120)
        assert engine.is_ready(portrait)
        assert not np.array_equal(engine.render(portrait, target_for(portrait)), portrait.image)
    finally:
        engine.close()


def test_missing_and_corrupt_checkpoints_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="needs a trained model"):
        create_engine("neural", backend="onnxruntime")
    with pytest.raises(UserError, match="does not exist"):
        create_engine("neural", checkpoint=tmp_path / "nope.safetensors", backend="onnxruntime")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError):
        create_engine("neural", checkpoint=bad, backend="onnxruntime")


def test_build_engine_command(checkpoint, tmp_path, capsys, landmarker_model):
    from live_puppet.backends import commands

    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    portrait_path = need(PORTRAITS / "bouguereau_girl.jpg")
    argv = ["build-engine", "--checkpoint", str(checkpoint), "--portrait", str(portrait_path),
            "--backend", "onnxruntime", "--engine-dir", str(tmp_path / "eng"),
            "--landmarker-model", str(landmarker_model), "--max-side", "512"]
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "built" in capsys.readouterr().out
    assert len(list((tmp_path / "eng").glob("*.onnx"))) == 1
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    assert "reused the cached engine" in capsys.readouterr().out


def test_build_engine_keeps_every_engine_it_builds_past_the_cache_limit(checkpoint, tmp_path, capsys,
                                                                       landmarker_model, monkeypatch):
    """The cache keeps 24 engines; a gallery of more must not lose the first ones it just built.
    Here the limit is 2 and the gallery holds 3 paintings."""
    from live_puppet.backends import cache, commands

    real_init = cache.EngineCache.__init__
    monkeypatch.setattr(cache.EngineCache, "__init__", lambda self, root, keep=2: real_init(self, root, keep))
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("bouguereau_girl", "lady_agnew", "mona_lisa"):
        (gallery / f"{name}.jpg").write_bytes(need(PORTRAITS / f"{name}.jpg").read_bytes())
    parser = argparse.ArgumentParser()
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build-engine", "--checkpoint", str(checkpoint), "--portrait", str(gallery),
                              "--backend", "onnxruntime", "--engine-dir", str(tmp_path / "eng"),
                              "--landmarker-model", str(landmarker_model), "--max-side", "512"])
    assert args.func(args) == 0
    assert capsys.readouterr().out.count(": built") == 3
    assert len(list((tmp_path / "eng").glob("*.onnx"))) == 3


def test_a_model_fine_tuned_on_another_portrait_says_whose_face_it_renders(tmp_path, portrait):
    from live_puppet.backends.builder import PortraitEngineBuilder

    torch.manual_seed(0)
    cfg = tiny_config()
    g = Generator(cfg)
    path = save_checkpoint(tmp_path / "mona.safetensors", Checkpoint(
        config=cfg, generator=g, e_hat=torch.zeros(1, cfg.embed_dim), psi=torch.zeros(1, g.psi_dim),
        kind="portrait", extra={"portrait": "/home/me/mona_lisa.jpg"}))
    said = []
    builder = PortraitEngineBuilder(path, backend="torch", engine_dir=tmp_path / "eng",
                                    announce=said.append, progress=False)
    builder.build(portrait)  # bouguereau_girl.jpg
    assert any("fine-tuned on 'mona_lisa.jpg'" in s and "bouguereau_girl.jpg" in s for s in said)
    own = save_checkpoint(tmp_path / "bouguereau.safetensors", Checkpoint(
        config=cfg, generator=g, e_hat=torch.zeros(1, cfg.embed_dim), psi=torch.zeros(1, g.psi_dim),
        kind="portrait", extra={"portrait": "/home/me/bouguereau_girl.jpg"}))
    said.clear()
    PortraitEngineBuilder(own, backend="torch", engine_dir=tmp_path / "eng", announce=said.append,
                          progress=False).build(portrait)
    assert not any("fine-tuned on" in s for s in said)  # its own portrait: nothing to say


def test_swap_keeps_rendering_the_current_portrait_while_the_next_builds(
        checkpoint, portrait, image_tracker, tmp_path):
    from live_puppet.portrait import load_portrait

    other = load_portrait(need(PORTRAITS / "woman_in_black.jpg"), image_tracker, max_side=512)
    engine = make(checkpoint, tmp_path)
    try:
        engine.prepare(portrait)
        current = engine.render(portrait, target_for(portrait))
        future = engine.prepare_async(other)
        frames = [engine.render(portrait, target_for(portrait)) for _ in range(3)]
        assert all(np.array_equal(f, current) for f in frames)  # the stream goes on unchanged
        future.result(timeout=120)
        assert engine.is_ready(other) and engine.is_ready(portrait)
        assert engine.render(other, target_for(other)).shape == other.image.shape
    finally:
        engine.close()


def copies(portrait, n: int):
    """`n` distinct portraits with the same picture (their engines share one cache entry)."""
    import dataclasses

    return [dataclasses.replace(portrait, name=f"{portrait.name}-{i}", extras={}) for i in range(n)]


def test_eviction_is_least_recently_used_and_spares_the_portrait_on_screen(
        checkpoint, portrait, tmp_path):
    from live_puppet.render.neural import KEEP_PREPARED

    first, *others = copies(portrait, KEEP_PREPARED + 4)
    engine = make(checkpoint, tmp_path)
    try:
        for p in [first] + others[:KEEP_PREPARED - 1]:
            engine.prepare(p)
        assert not np.array_equal(engine.render(first, target_for(first)), first.image)
        engine.prepare(others[KEEP_PREPARED - 1])  # one more: evicts the least recently used
        assert engine.is_ready(first)
        assert not engine.is_ready(others[0])
        assert not np.array_equal(engine.render(first, target_for(first)), first.image)
        for p in others[KEEP_PREPARED:]:  # more builds, `first` still the one on screen
            engine.prepare(p)
        assert engine.is_ready(first)
        assert not np.array_equal(engine.render(first, target_for(first)), first.image)
        assert len(engine._ready) == KEEP_PREPARED
    finally:
        engine.close()


def test_close_does_not_wait_for_a_running_build_and_drops_it(
        checkpoint, portrait, tmp_path, monkeypatch, capsys):
    import threading
    import time

    engine = make(checkpoint, tmp_path)
    real_build = engine.builder.build
    started, finished = threading.Event(), threading.Event()

    def slow_build(p):
        started.set()
        time.sleep(3.0)
        try:
            return real_build(p)
        finally:
            finished.set()

    monkeypatch.setattr(engine.builder, "build", slow_build)
    future = engine.prepare_async(portrait)
    assert started.wait(10)
    engine.close()
    assert not finished.is_set()  # the 3 s build is not waited for
    assert finished.wait(60)
    future.result(timeout=10)
    assert not engine.is_ready(portrait) and len(engine._ready) == 0  # the late build is dropped
    assert "stays at rest" not in capsys.readouterr().err  # (dropped: nothing to say)
    assert "Traceback" not in capsys.readouterr().err


def test_quitting_during_a_build_exits_promptly(checkpoint, tmp_path):
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import threading
        from live_puppet.render import create_engine
        engine = create_engine("neural", checkpoint={str(checkpoint)!r}, backend="onnxruntime",
                               engine_dir={str(tmp_path)!r}, progress=False)
        started = threading.Event()
        def endless_compile(portrait):
            started.set()
            threading.Event().wait()  # never ends
        engine.builder.build = endless_compile
        class Slow:
            name = "slow"
        engine.prepare_async(Slow())
        started.wait()
        engine.close()
        print("closed", flush=True)
    """)
    # the interpreter exits although the build never ends (else: the timeout fails the test)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "closed" in proc.stdout


def test_a_portrait_whose_build_failed_once_is_rebuilt_after_a_later_eviction(
        checkpoint, portrait, tmp_path, monkeypatch):
    """A failed build is not retried every frame; but once a retry has worked, that portrait is
    an ordinary one again: evicted later, rendering it builds it again instead of freezing."""
    import time
    from live_puppet.render.neural import KEEP_PREPARED

    first, *others = copies(portrait, KEEP_PREPARED + 1)
    engine = make(checkpoint, tmp_path)
    real_build = engine.builder.build
    calls = {"n": 0}

    def flaky_build(p):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("out of GPU memory")
        return real_build(p)

    monkeypatch.setattr(engine.builder, "build", flaky_build)
    try:
        with pytest.raises(RuntimeError):
            engine.prepare_async(first).result(timeout=60)
        engine.prepare_async(first).result(timeout=60)  # the user switches back: it works now
        for p in others:  # the user goes through the others; `first` is evicted
            engine.render(p, target_for(p))
            engine.prepare_async(p).result(timeout=60)
            engine.render(p, target_for(p))
        assert not engine.is_ready(first)
        deadline = time.perf_counter() + 60  # back to it: rendering starts its build again
        while time.perf_counter() < deadline:
            if not np.array_equal(engine.render(first, target_for(first)), first.image):
                break
            time.sleep(0.1)
        assert engine.is_ready(first)
    finally:
        engine.close()


def test_a_retrained_checkpoint_gets_its_own_engine_not_the_cached_one(checkpoint, portrait, tmp_path):
    # Same file name, new weights (train wrote last.safetensors again): the old engine would render
    # the old model.
    import shutil

    from live_puppet.training.checkpoint import load_checkpoint

    path = tmp_path / "last.safetensors"
    shutil.copy(checkpoint, path)
    engines = tmp_path / "engines"
    built = []
    for retrain in (False, False, True):
        if retrain:
            ck = load_checkpoint(path)
            with torch.no_grad():
                ck.generator.projection.mul_(-1.0)
            save_checkpoint(path, ck)
        engine = make(path, engines)
        try:
            engine.prepare(portrait)
            built.append((engine.prepared(portrait).from_cache,
                          engine.render(portrait, target_for(portrait))))
        finally:
            engine.close()
    (cold, first), (cached, again), (rebuilt, retrained) = built
    assert (cold, cached, rebuilt) == (False, True, False)
    assert np.array_equal(first, again) and not np.array_equal(first, retrained)


def test_a_build_started_by_rendering_that_fails_is_said_once(checkpoint, portrait, tmp_path, monkeypatch,
                                                              capsys):
    import time

    # Swapping back to an evicted portrait rebuilds it in the background; when that fails, the
    # user is told why the portrait stays at rest, once, and it is not retried every frame.
    engine = make(checkpoint, tmp_path)
    calls = []

    def failing_build(p):
        calls.append(p)
        raise RuntimeError("out of GPU memory")

    monkeypatch.setattr(engine.builder, "build", failing_build)
    started = []
    prepare_async = engine.prepare_async
    monkeypatch.setattr(engine, "prepare_async", lambda p: started.append(prepare_async(p)) or started[-1])
    try:
        assert np.array_equal(engine.render(portrait, target_for(portrait)), portrait.image)
        with pytest.raises(RuntimeError):
            started[0].result(timeout=60)
        err = ""
        for _ in range(100):  # (the message comes from the build's thread, just after)
            err += capsys.readouterr().err
            if "stays at rest" in err:
                break
            time.sleep(0.05)
        for _ in range(5):
            engine.render(portrait, target_for(portrait))
    finally:
        engine.close()
    err += capsys.readouterr().err
    assert len(calls) == 1 and err.count("stays at rest") == 1 and "out of GPU memory" in err


def test_an_engine_that_runs_code_when_loaded_is_signed_and_kept_per_user(checkpoint, portrait, tmp_path,
                                                                           monkeypatch):
    # (TensorRT cannot run here: an ONNX backend that declares its files run code stands in)
    import json

    from live_puppet.backends import BACKENDS, backend_class, cache
    from live_puppet.backends.builder import PortraitEngineBuilder, PortraitInputs

    class CodeLoading(backend_class("onnxruntime")):
        loads_code = True

    monkeypatch.setitem(BACKENDS, "code-loading", CodeLoading)
    monkeypatch.setattr(cache, "signing_key_path", lambda: tmp_path / "user-data" / "key")
    monkeypatch.setattr(cache, "_SIGNING_KEY", [])
    engine = make(checkpoint, tmp_path / "engines", backend="code-loading")
    try:
        engine.prepare(portrait)
        key = engine.prepared(portrait).key
    finally:
        engine.close()
    assert "signature" in json.loads((tmp_path / "engines" / f"{key}.json").read_text())
    builder = PortraitEngineBuilder(checkpoint, backend="code-loading", engine_dir=tmp_path / "engines",
                                    announce=None, progress=False)
    inputs = PortraitInputs.from_portrait(portrait, builder.size)
    assert builder.cache_key(inputs) == key
    monkeypatch.setattr(cache, "_SIGNING_KEY", [b"another user's key".ljust(32, b".")])
    assert builder.cache_key(inputs) != key  # another user: their own engine, not a rebuild of this one
