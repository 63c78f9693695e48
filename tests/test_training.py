"""Checkpoints, VGG weight files, prepare, train (with resume) and finetune, on tiny data."""

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from live_puppet import sketch
from live_puppet.errors import UserError
from live_puppet.model import Discriminator, Embedder, Generator, ModelConfig
from live_puppet.model.losses import VGG19_PLAN
from live_puppet.training import commands
from live_puppet.training.checkpoint import Checkpoint, load_checkpoint, load_vgg_weights, \
    save_checkpoint
from live_puppet.training.data import EpisodeSampler, PreparedDataset

torch.set_num_threads(2)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
LANDMARKER = SHARED / "models/face_landmarker.task"
DRIVING = SHARED / "data/driving/d0.mp4"
needs_shared = pytest.mark.skipif(
    not (LANDMARKER.is_file() and DRIVING.is_file()),
    reason="needs ../shared/models/face_landmarker.task and ../shared/data/driving/d0.mp4")

TINY = ModelConfig(image_size=32, base_channels=8, max_channels=16, embed_dim=64,
                   generator_down_blocks=2, generator_res_blocks=1, attention_resolution=16, shots=2)
D_EMB = TINY.embed_dim


def tiny_meta_checkpoint(num_videos=3, step=7) -> Checkpoint:
    torch.manual_seed(0)
    E, G, D = Embedder(TINY), Generator(TINY), Discriminator(TINY, num_videos)
    opt = torch.optim.Adam(G.parameters(), lr=1e-3)
    G(torch.zeros(1, 3, 32, 32), G.project(torch.ones(1, D_EMB))).mean().backward()
    opt.step()
    return Checkpoint(config=TINY, generator=G, embedder=E, discriminator=D, step=step,
                      videos=[f"v{i}" for i in range(num_videos)], optimizer_g=opt.state_dict())


def test_meta_checkpoint_round_trips(tmp_path):
    ck = tiny_meta_checkpoint()
    path = save_checkpoint(tmp_path / "ck.safetensors", ck)
    back = load_checkpoint(path)
    assert back.config == TINY and back.step == 7 and back.kind == "meta"
    assert back.videos == ["v0", "v1", "v2"] and back.e_hat is None and back.psi is None
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    e = torch.rand(1, D_EMB)
    for m in (ck.generator, ck.embedder, ck.discriminator):
        m.eval()
    assert torch.equal(back.generator(x, back.generator.project(e)),
                       ck.generator(x, ck.generator.project(e)))
    assert torch.equal(back.embedder(x, x), ck.embedder(x, x))
    v = torch.tensor([2])
    assert torch.equal(back.discriminator(x, x, video=v)[0], ck.discriminator(x, x, video=v)[0])
    opt = torch.optim.Adam(back.generator.parameters(), lr=1e-3)
    opt.load_state_dict(back.optimizer_g)  # the optimiser state is usable for resuming
    assert back.optimizer_d is None


def test_portrait_checkpoint_holds_e_hat_and_psi(tmp_path):
    torch.manual_seed(0)
    G = Generator(TINY)
    e_hat = torch.rand(1, D_EMB)
    psi = G.project(e_hat).detach() + 0.1
    save_checkpoint(tmp_path / "p.safetensors", Checkpoint(
        config=TINY, generator=G, e_hat=e_hat, psi=psi, step=3, kind="portrait",
        extra={"boxes": [[1.0, 2.0, 3.0, 4.0]]}))
    back = load_checkpoint(tmp_path / "p.safetensors")
    assert back.kind == "portrait" and back.embedder is None and back.discriminator is None
    assert torch.equal(back.e_hat, e_hat) and torch.equal(back.psi, psi)
    assert back.extra == {"boxes": [[1.0, 2.0, 3.0, 4.0]]}


def assert_one_line_user_error(call, *needles):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    for needle in needles:
        assert needle in message
    return message


def test_missing_corrupt_truncated_and_foreign_checkpoints_are_user_errors(tmp_path):
    from safetensors.torch import save_file

    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "nope.safetensors"),
                               "does not exist")
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path), "is a folder")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 100)
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "junk.safetensors"), "corrupt")
    good = save_checkpoint(tmp_path / "good.safetensors", tiny_meta_checkpoint())
    data = good.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "cut.safetensors"), "truncated")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"),
              metadata={"format": "pt"})
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "foreign.safetensors"),
                               "not a live-puppet model checkpoint")
    # a tensor of the wrong shape under a right name
    tensors = {"generator.projection": torch.zeros(3, 3)}
    save_file(tensors, str(tmp_path / "bad.safetensors"),
              metadata={"format": "live-puppet/talking-head", "format_version": "1",
                        "config": TINY.to_json()})
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "bad.safetensors"), "damaged")


def test_a_checkpoint_missing_a_weight_is_refused_not_filled_with_random_ones(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = save_checkpoint(tmp_path / "good.safetensors", tiny_meta_checkpoint())
    tensors = load_file(str(good))
    name = next(k for k in tensors if k.startswith("generator.") and k.endswith("weight"))
    del tensors[name]
    with safe_open(str(good), "pt") as f:  # (as a tool that drops a tensor and the checksum would)
        meta = {k: v for k, v in f.metadata().items() if k != "sha256"}
    save_file(tensors, str(tmp_path / "short.safetensors"), metadata=meta)
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "short.safetensors"), "damaged")


def test_a_changed_weight_byte_is_refused(tmp_path):
    # a bit flipped on disk or in a copy still parses as safetensors and would render garbage
    good = save_checkpoint(tmp_path / "good.safetensors", tiny_meta_checkpoint())
    data = bytearray(good.read_bytes())
    header = int.from_bytes(data[:8], "little")
    data[8 + header + 1000] ^= 0x10  # a byte inside the tensors, past the JSON header
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    assert_one_line_user_error(lambda: load_checkpoint(tmp_path / "flipped.safetensors"),
                               "damaged", "checksum")
    assert load_checkpoint(good).step == 7  # the untouched file still loads


def test_bad_checkpoint_through_the_cli_is_one_line_and_exit_2(tmp_path, capsys):
    cli = pytest.importorskip("live_puppet.cli")
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint")
    (tmp_path / "face.png").write_bytes(b"")
    code = cli.main(["finetune", "--checkpoint", str(tmp_path / "junk.safetensors"),
                     "--portrait", str(tmp_path / "face.png"), "--out", str(tmp_path / "o.safetensors")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "junk.safetensors" in err


def torchvision_style_vgg19(path: Path) -> list[torch.Tensor]:
    """A random VGG19 in torchvision's key layout (features.N.weight), saved as safetensors."""
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tensors, weights, index, prev = {}, [], 0, 3
    for item in VGG19_PLAN:
        if item == "M":
            index += 1
            continue
        w = torch.randn(item, prev, 3, 3) * 0.05
        tensors[f"features.{index}.weight"] = w
        tensors[f"features.{index}.bias"] = torch.randn(item) * 0.01
        weights.append(w)
        index += 2
        prev = item
    tensors["classifier.0.weight"] = torch.randn(10, 20)
    save_file(tensors, str(path))
    return weights


def test_vgg19_weights_load_in_layer_order_from_a_user_file(tmp_path):
    weights = torchvision_style_vgg19(tmp_path / "vgg19.safetensors")
    net = load_vgg_weights(tmp_path / "vgg19.safetensors", "vgg19")
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    # features.10 sorts after features.2 (natural order), so layer 5 got the 5th weights
    for conv, w in zip(convs, weights):
        assert torch.equal(conv.weight, w)
    assert not any(p.requires_grad for p in net.parameters())
    assert_one_line_user_error(lambda: load_vgg_weights(tmp_path / "vgg19.safetensors", "vggface"),
                               "--vggface")
    assert_one_line_user_error(lambda: load_vgg_weights(tmp_path / "none.pth", "vgg19"),
                               "does not exist")


def write_prepared_clip(root: Path, clip_id: str, frames: int, size: int = 32, seed: int = 0):
    """A prepared clip made up here: a coloured square that moves, with a sketch per frame."""
    rng = np.random.default_rng(seed)
    clip = root / clip_id
    (clip / "frames").mkdir(parents=True)
    (clip / "sketches").mkdir()
    color = rng.integers(60, 255, 3).tolist()
    marks = []
    for j in range(frames):
        img = np.full((size, size, 3), 30, np.uint8)
        x = 4 + j % (size - 16)
        cv2.rectangle(img, (x, 8), (x + 10, 20), color, -1)
        cv2.imwrite(str(clip / "frames" / f"{j:06d}.jpg"), img)
        pts = np.stack([np.linspace(x, x + 10, 68), np.linspace(8, 20, 68)], 1).astype(np.float32)
        cv2.imwrite(str(clip / "sketches" / f"{j:06d}.png"),
                    cv2.cvtColor(sketch.draw_sketch(pts, size), cv2.COLOR_RGB2BGR))
        marks.append(pts)
    np.save(clip / "landmarks.npy", np.stack(marks))
    (clip / "meta.json").write_text(json.dumps({"clip": clip_id, "size": size, "frames": frames}))


def test_episodes_have_k_shots_and_a_target_of_one_clip(tmp_path):
    write_prepared_clip(tmp_path, "a/x/001", 5, seed=0)
    write_prepared_clip(tmp_path, "b/y/001", 2, seed=1)  # too short for K=2 episodes
    data = PreparedDataset(tmp_path)
    assert data.clip_ids == ["a/x/001", "b/y/001"]
    ep = EpisodeSampler(data, shots=2, size=32).sample(3)
    assert ep.shots.shape == (3, 2, 3, 32, 32) and ep.image.shape == (3, 3, 32, 32)
    assert ep.video.tolist() == [0, 0, 0]
    assert ep.image.min() >= -1 and ep.image.max() <= 1
    # sketches at another size are redrawn from the landmarks
    big = EpisodeSampler(data, shots=2, size=64).sample(1)
    assert big.sketch.shape == (1, 3, 64, 64) and (big.sketch > -1).any()
    with pytest.raises(UserError):
        EpisodeSampler(data, shots=9, size=32)
    with pytest.raises(UserError):
        PreparedDataset(tmp_path / "empty")


def test_train_writes_checkpoint_log_plot_samples_and_resumes(tmp_path):
    from live_puppet.training.train import LossLog, TrainOptions, run_training

    for i in range(3):
        write_prepared_clip(tmp_path / "data", f"clip{i}", 6, seed=i)
    run = tmp_path / "run"
    opts = TrainOptions(data=tmp_path / "data", out=run, config=TINY, steps=3, batch=2,
                        save_every=2, sample_every=2, threads=1)
    messages = []
    run_training(opts, echo=messages.append)
    assert any("WITHOUT the content loss" in m for m in messages)
    ck = load_checkpoint(run / "last.safetensors")
    assert ck.step == 3 and ck.videos == ["clip0", "clip1", "clip2"]
    assert ck.discriminator.W.shape == (D_EMB, 3)
    assert [r["step"] for r in LossLog(run).rows()] == [1, 2, 3]
    assert (run / "losses.png").stat().st_size > 1000
    grid = cv2.imread(str(run / "samples" / "step_0000002.png"))
    assert grid.shape[1] > 5 * 32  # K shots | sketch | output | truth side by side
    before = {k: v.clone() for k, v in ck.generator.state_dict().items()}

    messages.clear()
    run_training(TrainOptions(data=tmp_path / "data", out=run, config=TINY, steps=5, batch=2,
                              save_every=10, sample_every=10, threads=1), echo=messages.append)
    assert any("resuming" in m and "step 3" in m for m in messages)
    ck2 = load_checkpoint(run / "last.safetensors")
    assert ck2.step == 5
    assert [r["step"] for r in LossLog(run).rows()] == [1, 2, 3, 4, 5]
    changed = any(not torch.equal(before[k], v) for k, v in ck2.generator.state_dict().items())
    assert changed

    write_prepared_clip(tmp_path / "data", "clip3", 6, seed=3)
    assert_one_line_user_error(lambda: run_training(
        TrainOptions(data=tmp_path / "data", out=run, config=TINY, steps=6)), "other clips")


def test_finetuning_raises_psnr_on_the_shots():
    from live_puppet.model.losses import ContentLoss
    from live_puppet.training.finetune import FineTuner, self_reenactment_psnr

    ck = tiny_meta_checkpoint()
    torch.manual_seed(0)
    image = torch.full((1, 3, 32, 32), -0.6)
    image[:, 0, 8:20, 8:20] = 0.8  # a red square on grey
    skt = -torch.ones(1, 3, 32, 32)
    skt[:, 1, 8, 8:20] = 1.0
    tuner = FineTuner(ck, image, skt, ContentLoss(None, None, 0, 0), seed=0)
    tuner.config = tuner.config.replace(d_steps=1)  # keep the test short
    for group in tuner.opt_g.param_groups:
        group["lr"] = 3e-3
    assert torch.allclose(tuner.w, tuner.e_hat)  # w' starts from ê
    before = self_reenactment_psnr(tuner.G, tuner.psi, image, skt)
    for _ in range(20):
        tuner.step(batch=1)
    after = self_reenactment_psnr(tuner.G, tuner.psi, image, skt)
    assert after > before + 3.0
    result = tuner.result(ck, {})
    assert result.kind == "portrait" and result.psi.shape == (1, ck.generator.psi_dim)
    assert result.e_hat.shape == (1, D_EMB)


def finetune_setup(tmp_path, monkeypatch):
    """A saved tiny meta checkpoint, a portrait file, and load_shots faked (no landmarker)."""
    from live_puppet.training import finetune

    ck_path = save_checkpoint(tmp_path / "meta.safetensors", tiny_meta_checkpoint())
    portrait = tmp_path / "face.png"
    portrait.write_bytes(b"")
    image = torch.full((1, 3, 32, 32), -0.6)
    image[:, 0, 8:20, 8:20] = 0.8
    skt = -torch.ones(1, 3, 32, 32)
    skt[:, 1, 8, 8:20] = 1.0
    monkeypatch.setattr(finetune, "load_shots", lambda paths, size, landmarker=None:
                        finetune.FewShots(image, skt, [(0.0, 0.0, 32.0, 32.0)], ["face.png"]))
    return finetune, ck_path, portrait


def test_finetune_refuses_a_folder_or_unwritable_out_before_any_step(tmp_path, monkeypatch):
    finetune, ck_path, portrait = finetune_setup(tmp_path, monkeypatch)

    def no_step(self, batch=4):
        raise AssertionError("a fine-tuning step ran before --out was checked")

    monkeypatch.setattr(finetune.FineTuner, "step", no_step)
    folder = tmp_path / "outdir"
    folder.mkdir()
    outs = [(folder, "folder"), (tmp_path / "missing" / "ft.safetensors", "does not exist")]
    if Path("/proc/self").is_dir():
        outs.append((Path("/proc/ft.safetensors"), "/proc/ft.safetensors"))
    for out, needle in outs:
        assert_one_line_user_error(lambda: finetune.run_finetune(
            ck_path, portrait, None, out, steps=2, batch=1, echo=lambda *a: None), needle)
    assert not list(tmp_path.rglob("*.tmp")) and not Path("/proc/ft.safetensors.tmp").exists()


def test_save_checkpoint_to_a_folder_is_a_user_error_and_leaves_no_tmp(tmp_path):
    (tmp_path / "outdir").mkdir()
    assert_one_line_user_error(
        lambda: save_checkpoint(tmp_path / "outdir", tiny_meta_checkpoint()), "outdir")
    assert not list(tmp_path.rglob("*.tmp"))


def ctrl_c_after(finetune, steps: int, monkeypatch) -> None:
    """Fine-tuning steps raise KeyboardInterrupt once `steps` are done (a Ctrl-C then)."""
    real_step = finetune.FineTuner.step

    def step_then_interrupt(self, batch=4):
        if self.steps_done == steps:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(finetune.FineTuner, "step", step_then_interrupt)


def test_interrupted_finetune_saves_the_model_so_far_and_reraises(tmp_path, monkeypatch):
    finetune, ck_path, portrait = finetune_setup(tmp_path, monkeypatch)
    ctrl_c_after(finetune, 2, monkeypatch)
    lines = []
    out = tmp_path / "ft.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetune(ck_path, portrait, None, out, steps=50, batch=1, echo=lines.append)
    back = load_checkpoint(out)
    assert back.kind == "portrait" and back.step == 2 and back.extra["interrupted_at_step"] == 2
    assert back.psi.shape == (1, back.generator.psi_dim)
    assert any("interrupted" in line and "2 of 50" in line and str(out) in line
               for line in lines)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_finetune_device_cuda_without_cuda_or_unknown_is_a_user_error(tmp_path, monkeypatch):
    finetune, ck_path, portrait = finetune_setup(tmp_path, monkeypatch)
    for device, needle in (("cuda", "cuda"), ("banana", "banana")):
        assert_one_line_user_error(lambda: finetune.run_finetune(
            ck_path, portrait, None, tmp_path / "ft.safetensors", steps=1, batch=1,
            device=device, echo=lambda *a: None), needle, "--device")


def test_finetune_shots_folder_without_pictures_is_a_user_error(tmp_path):
    from live_puppet.training.finetune import collect_pictures

    portrait = tmp_path / "face.png"
    portrait.write_bytes(b"")
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "notes.txt").write_text("no pictures here")
    assert_one_line_user_error(lambda: collect_pictures(portrait, shots, 8), "shots", "--shots")
    (shots / "b.jpg").write_bytes(b"")
    assert collect_pictures(portrait, shots, 8) == [portrait, shots / "b.jpg"]


def parser_with_commands() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="live-puppet")
    commands.register(parser.add_subparsers(dest="command"))
    return parser


def test_register_adds_prepare_train_finetune_with_handlers(tmp_path):
    parser = parser_with_commands()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--steps", "5"])
    assert args.func is commands.cmd_train and args.config == "small" and args.steps == 5
    args = parser.parse_args(["prepare", "in", "out", "--size", "128"])
    assert args.func is commands.cmd_prepare and args.size == 128
    args = parser.parse_args(["finetune", "--checkpoint", "c", "--portrait", "p", "--out", "o"])
    assert args.func is commands.cmd_finetune
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--data", "d", "--out", "o", "--steps", "0"])
    missing = parser.parse_args(["prepare", str(tmp_path / "nothing"), str(tmp_path / "out")])
    assert_one_line_user_error(lambda: missing.func(missing), "does not exist")


@needs_shared
def test_prepare_caches_clips_skips_faceless_ones_and_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("LIVE_PUPPET_LANDMARKER", str(LANDMARKER))
    dataset = tmp_path / "videos"
    (dataset / "id001" / "vidA").mkdir(parents=True)
    (dataset / "id001" / "vidA" / "00001.mp4").symlink_to(DRIVING)
    writer = cv2.VideoWriter(str(dataset / "blank.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 25,
                             (64, 64))
    for _ in range(5):
        writer.write(np.zeros((64, 64, 3), np.uint8))
    writer.release()
    out = tmp_path / "prepared"
    parser = parser_with_commands()
    args = parser.parse_args(["prepare", str(dataset), str(out), "--size", "64",
                              "--max-frames", "4"])
    assert args.func(args) == 0
    clip = out / "id001" / "vidA" / "00001"
    meta = json.loads((clip / "meta.json").read_text())
    assert meta["frames"] == 4 and meta["clip"] == "id001/vidA/00001"
    assert len(list((clip / "frames").glob("*.jpg"))) == 4
    assert np.load(clip / "landmarks.npy").shape == (4, 68, 2)
    assert cv2.imread(str(clip / "sketches" / "000000.png")).shape == (64, 64, 3)
    assert json.loads((out / "skipped.json").read_text()) == ["blank"]
    from live_puppet.training.prepare import prepare_dataset

    counts = prepare_dataset(dataset, out, size=64, max_frames=4)
    # The face-less clip stays a skip (it was counted as done, so a failed run turned to success).
    assert counts == {"prepared": 0, "resumed": 1, "skipped": 1, "unreadable": 0, "frames": 0}
    for size in ("16", "100000"):  # 100000 px would allocate 30 GB per frame
        args = parser.parse_args(["prepare", str(dataset), str(out), "--size", size])
        assert_one_line_user_error(lambda: args.func(args), "128 for the small model")


def test_checkpoint_with_nan_weights_is_refused_not_rendered_black(tmp_path):
    ck = tiny_meta_checkpoint()
    with torch.no_grad():
        next(ck.generator.parameters()).view(-1)[0] = float("nan")
    path = save_checkpoint(tmp_path / "nan.safetensors", ck)
    assert_one_line_user_error(lambda: load_checkpoint(path), "NaN", "generator.")


def test_diverging_training_stops_with_a_sentence_and_keeps_the_last_good_checkpoint(tmp_path):
    from live_puppet.training.train import TrainOptions, run_training

    for i in range(2):
        write_prepared_clip(tmp_path / "data", f"clip{i}", 6, seed=i)
    run = tmp_path / "run"
    run_training(TrainOptions(data=tmp_path / "data", out=run, config=TINY, steps=2, batch=1,
                              save_every=2, sample_every=10, threads=1), echo=lambda *a: None)
    good = (run / "last.safetensors").read_bytes()
    message = assert_one_line_user_error(lambda: run_training(TrainOptions(
        data=tmp_path / "data", out=run, config=TINY, steps=50, batch=1, save_every=1,
        sample_every=100, threads=1, lr_g=1e30, lr_d=1e30), echo=lambda *a: None), "diverged")
    assert "still holds step 2" in message
    assert (run / "last.safetensors").read_bytes() == good  # no NaN model saved over it
    assert load_checkpoint(run / "last.safetensors").step == 2


def test_diverging_finetune_writes_nothing(tmp_path, monkeypatch):
    finetune, ck_path, portrait = finetune_setup(tmp_path, monkeypatch)
    real_init = finetune.FineTuner.__init__

    def hot_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = 1e30

    monkeypatch.setattr(finetune.FineTuner, "__init__", hot_init)
    out = tmp_path / "ft.safetensors"
    assert_one_line_user_error(lambda: finetune.run_finetune(
        ck_path, portrait, None, out, steps=50, batch=1, echo=lambda *a: None), "diverged")
    assert not out.exists() and not list(tmp_path.rglob("*.tmp"))


def test_finetune_never_writes_over_its_inputs_or_a_finished_model(tmp_path, monkeypatch):
    finetune, ck_path, portrait = finetune_setup(tmp_path, monkeypatch)
    meta = ck_path.read_bytes()
    for out, needle in ((ck_path, "one of the inputs"), (portrait, "one of the inputs"),
                        (tmp_path / "mona.jpg", "ending in .safetensors")):
        assert_one_line_user_error(lambda: finetune.run_finetune(
            ck_path, portrait, None, out, steps=1, batch=1, echo=lambda *a: None), needle)
    assert ck_path.read_bytes() == meta
    # A finished model from an earlier run survives a Ctrl-C in the next one.
    out = tmp_path / "ft.safetensors"
    finetune.run_finetune(ck_path, portrait, None, out, steps=1, batch=1, echo=lambda *a: None)
    finished = out.read_bytes()
    ctrl_c_after(finetune, 1, monkeypatch)
    lines = []
    with pytest.raises(KeyboardInterrupt):
        finetune.run_finetune(ck_path, portrait, None, out, steps=5, batch=1, echo=lines.append)
    assert out.read_bytes() == finished
    partial = tmp_path / "ft.partial.safetensors"
    assert load_checkpoint(partial).extra["interrupted_at_step"] == 1
    assert any(str(partial) in line and "is kept" in line for line in lines)


def test_an_error_mid_training_keeps_the_steps_done(tmp_path, monkeypatch):
    from live_puppet.training.train import TrainOptions, run_training

    for i in range(2):
        write_prepared_clip(tmp_path / "data", f"clip{i}", 6, seed=i)
    real_sample = EpisodeSampler.sample
    calls = []

    def sample_until_a_frame_is_gone(self, batch):
        calls.append(1)
        if len(calls) == 4:
            raise UserError("A prepared frame is missing; run prepare again.")
        return real_sample(self, batch)

    monkeypatch.setattr(EpisodeSampler, "sample", sample_until_a_frame_is_gone)
    run = tmp_path / "run"
    lines = []
    with pytest.raises(UserError, match="missing"):
        run_training(TrainOptions(data=tmp_path / "data", out=run, config=TINY, steps=10, batch=1,
                                  save_every=100, sample_every=100, threads=1), echo=lines.append)
    assert load_checkpoint(run / "last.safetensors").step == 3  # not lost (save_every was 100)
    assert any("saved step 3" in line for line in lines)


def test_ctrl_c_while_a_checkpoint_is_written_waits_for_it(tmp_path, monkeypatch):
    import os
    import signal

    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # pressed while the file is being written
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_with_ctrl_c)
    path = tmp_path / "ck.safetensors"
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, tiny_meta_checkpoint())
    assert load_checkpoint(path).step == 7  # complete, then the interrupt
    assert not list(tmp_path.glob("*.tmp"))

    def interrupted(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. a second, forced interrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "other.safetensors", tiny_meta_checkpoint())
    assert not list(tmp_path.glob("*.tmp"))


def test_holdout_names_a_prepared_clip_and_leaves_one_to_train_on(tmp_path):
    for i in range(2):
        write_prepared_clip(tmp_path, f"clip{i}", 3, seed=i)
    assert PreparedDataset(tmp_path, exclude=("clip1",)).clip_ids == ["clip0"]
    assert_one_line_user_error(lambda: PreparedDataset(tmp_path, exclude=("clip7",)),
                               "--holdout clip7 is not a prepared clip")
    assert_one_line_user_error(lambda: PreparedDataset(tmp_path, exclude=("clip0", "clip1")),
                               "Every prepared clip")


def test_a_damaged_checkpoint_in_the_run_folder_says_how_to_start_over(tmp_path):
    from live_puppet.training.train import TrainOptions, run_training

    write_prepared_clip(tmp_path / "data", "clip0", 6, seed=0)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.safetensors").write_bytes(b"\x00cut short")
    assert_one_line_user_error(lambda: run_training(TrainOptions(
        data=tmp_path / "data", out=run, config=TINY, steps=2)), "Move", "away to start over")


@needs_shared
def test_prepare_on_a_full_disk_is_a_sentence_and_keeps_no_half_clip(tmp_path, monkeypatch):
    from live_puppet.training import prepare

    monkeypatch.setenv("LIVE_PUPPET_LANDMARKER", str(LANDMARKER))
    dataset = tmp_path / "videos"
    dataset.mkdir()
    (dataset / "talk.mp4").symlink_to(DRIVING)
    monkeypatch.setattr(prepare.cv2, "imwrite", lambda *a, **k: False)  # what OpenCV does then
    assert_one_line_user_error(lambda: prepare.prepare_dataset(dataset, tmp_path / "out", size=64,
                                                               max_frames=3), "free some space")
    assert not (tmp_path / "out" / "talk" / "meta.json").exists()


def test_ctrl_c_again_while_saving_for_the_first_one_lets_the_save_finish_and_be_told(tmp_path,
                                                                                     monkeypatch):
    import os
    import signal

    import safetensors.torch

    real_save = safetensors.torch.save_file

    def save_with_ctrl_c(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", save_with_ctrl_c)
    told = []
    with pytest.raises(KeyboardInterrupt):
        try:
            raise KeyboardInterrupt  # the first Ctrl-C, being handled by saving
        except KeyboardInterrupt:
            save_checkpoint(tmp_path / "ck.safetensors", tiny_meta_checkpoint())
            told.append("interrupted: saved")  # reached: the second Ctrl-C did not cut it off
            raise
    assert told and load_checkpoint(tmp_path / "ck.safetensors").step == 7


def test_an_error_before_the_first_step_saves_no_untrained_model(tmp_path, monkeypatch):
    from live_puppet.training.train import TrainOptions, run_training

    write_prepared_clip(tmp_path / "data", "clip0", 6, seed=0)

    def gone(self, batch):
        raise UserError("A prepared frame is missing; run prepare again.")

    monkeypatch.setattr(EpisodeSampler, "sample", gone)
    with pytest.raises(UserError, match="missing"):
        run_training(TrainOptions(data=tmp_path / "data", out=tmp_path / "run", config=TINY,
                                  steps=5, threads=1), echo=lambda *a: None)
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_holdout_on_a_folder_of_raw_videos_still_says_to_prepare_them(tmp_path):
    (tmp_path / "talk.mp4").write_bytes(b"a video")
    assert_one_line_user_error(lambda: PreparedDataset(tmp_path, exclude=("x",)), "holds videos")


def test_a_checkpoint_gets_a_plain_file_s_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    path = save_checkpoint(tmp_path / "ck.safetensors", tiny_meta_checkpoint())
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # safetensors writes 0600


def test_prepare_reads_a_phone_clip_upright_as_run_does(tmp_path):
    # prepare decoded clips through OpenCV, which turns a mirror-only display matrix upside down,
    # while run (PyAV, as FFmpeg's players) mirrors it back: training and the live run disagreed.
    import av
    import cv2
    from skimage import data

    from live_puppet.training.prepare import ClipPreparer

    picture = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)[:, 64:448]
    path = tmp_path / "selfie.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = picture.shape[1], picture.shape[0], "yuv420p"
        stream.set_display_rotation(0, hflip=True)
        for _ in range(3):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[:, ::-1]), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    from live_puppet.capture import VideoFileSource

    preparer = ClipPreparer(Path("unused.task"), 256, every=1, max_frames=None)
    frames = list(preparer._frames(VideoFileSource(path)))
    assert len(frames) == 3 and np.abs(frames[0][1].astype(int) - picture).mean() < 8
