"""Clip index, PyAV decoding with seek, phases and corrupt-clip handling on the real sample clips."""

from __future__ import annotations

import shutil

import av
import numpy as np
import pytest
import torch

from videogen.data import (
    ClipInfo,
    DataError,
    VideoClipDataset,
    assign_phases,
    build_index,
    collate,
    find_root,
    probe_clip,
    read_captions,
    read_clip,
)


def test_index_probes_every_sample_clip_and_caches(videos_root, probe_cache):
    index = build_index(videos_root)
    assert sorted(c.name for c in index.clips) == ["airplane_field.mp4", "bigbuckbunny.mp4", "bikes.mp4",
                                                    "chaplin.mp4", "fire2.mp4"]
    fire = next(c for c in index.clips if c.name == "fire2.mp4")
    assert fire.frames == 25 and fire.fps == pytest.approx(10.505, abs=0.01)
    assert (fire.width, fire.height) == (1280, 720)
    assert fire.duration == pytest.approx(2.38, abs=0.01)
    assert all(c.motion is not None and 0 < c.motion < 1 for c in index.clips)
    assert list(probe_cache.glob("probe-*.json")), "probe cache not written"
    again = build_index(videos_root)  # from the cache: identical
    assert [(c.path, c.motion) for c in again.clips] == [(c.path, c.motion) for c in index.clips]
    assert find_root(videos_root.parent) == videos_root


def test_read_clip_matches_full_decode_at_the_seeked_time(videos_root):
    path = videos_root / "clips" / "bikes.mp4"
    info = probe_clip(path)
    clip = read_clip(path, 4, fps=None, stride=5, start=6.0, info=info)
    assert clip.shape == (4, 3, 272, 640) and clip.dtype == torch.float32
    # reference: decode the whole file, pick the frames at 6.0 s + k * 5 / 25 s
    with av.open(str(path)) as c:
        frames = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    for k in range(4):
        t = 6.0 + k * 5 / 25
        ref = [a for (ft, a) in frames if ft <= t + 1e-6][-1]
        assert np.array_equal((clip[k].permute(1, 2, 0) * 255).round().byte().numpy(), ref)


def test_read_clip_resizes_crops_and_repeats_past_the_end(videos_root):
    path = videos_root / "clips" / "fire2.mp4"  # 2.38 s
    clip = read_clip(path, 16, fps=4.0, size=32)  # 16 frames at 4 fps = 3.75 s > 2.38 s
    assert clip.shape == (16, 3, 32, 32)
    assert float(clip.min()) >= 0 and float(clip.max()) <= 1
    assert torch.equal(clip[-1], clip[-2])  # clamped to the last frame


def test_corrupt_and_missing_clips_are_skipped_with_their_path(videos_root, tmp_path, caplog):
    shutil.copy(videos_root / "clips" / "fire2.mp4", tmp_path / "good.mp4")
    (tmp_path / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    data = (videos_root / "clips" / "bikes.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "captions.csv").write_text("path,caption\ngood.mp4,a room\ngarbage.mp4,x\nmissing.mp4,y\n"
                                           "truncated.mp4,z\n")
    index = build_index(tmp_path, cache_dir=tmp_path / "cache")
    assert "good.mp4" in [c.path for c in index.clips]
    assert "garbage.mp4" in index.skipped and "missing.mp4" in index.skipped
    assert "garbage.mp4" in caplog.text
    # whatever survived probing must still load (a truncated file that probes fine is skipped at decode)
    ds = VideoClipDataset(tmp_path, index.clips, num_frames=8, size=32, fps=8.0, train=False)
    for i in range(len(ds)):
        assert ds[i]["video"].shape == (3, 8, 32, 32)


def test_decode_failure_mid_run_falls_back_to_another_clip(videos_root, tmp_path):
    shutil.copy(videos_root / "clips" / "fire2.mp4", tmp_path / "a.mp4")
    good = ClipInfo("a.mp4", "ok", 2.38, 10.5, 1280, 720, 25)
    bad = ClipInfo("b.mp4", "gone", 2.0, 10.0, 64, 64, 20)  # listed but absent at decode time
    ds = VideoClipDataset(tmp_path, [bad, good], num_frames=4, size=16, fps=4.0, train=True, samples=2)
    item = ds[0]
    assert item["caption"] == "ok" and ds.failures == 1
    only_bad = VideoClipDataset(tmp_path, [bad], num_frames=4, size=16, fps=4.0, train=True, samples=1)
    with pytest.raises(DataError, match="every clip failed"):
        only_bad[0]
    # loader workers each hold a copy of the dataset: the count still reaches the main process
    from mlcore import make_loader

    workers = VideoClipDataset(tmp_path, [bad, good], num_frames=4, size=16, fps=4.0, train=True, samples=4)
    loader = make_loader(workers, batch_size=2, shuffle=True, num_workers=2, collate_fn=collate)
    assert [b["caption"] for b in loader] == [["ok", "ok"], ["ok", "ok"]]
    assert workers.failures == 1 and workers.bad_log.paths() == ["b.mp4"]


def test_captions_errors_name_the_file(tmp_path):
    (tmp_path / "captions.csv").write_text("file,text\na.mp4,x\n")
    with pytest.raises(DataError, match="captions.csv: expected columns path,caption"):
        read_captions(tmp_path)
    (tmp_path / "captions.csv").write_text("path,caption,phase\na.mp4,x,7\n")
    with pytest.raises(DataError, match=r"captions.csv:2: phase must be an integer 1..5"):
        read_captions(tmp_path)
    with pytest.raises(DataError, match="no captions.csv"):
        find_root(tmp_path / "nowhere")


def _clip(name, motion=None, phase=None):
    return ClipInfo(name, "", 1.0, 10.0, 8, 8, 10, phase=phase, motion=motion)


def test_phases_by_motion_calm_first_and_by_column():
    clips = [_clip("busy", 0.3), _clip("calm", 0.01), _clip("mid", 0.1), _clip("fast", 0.2)]
    ph = assign_phases(clips)
    assert [c.path for c in ph[1]] == ["calm"]
    assert [c.path for c in ph[2]] == ["calm", "mid"]
    assert [c.path for c in ph[4]] == ["calm", "mid", "fast", "busy"]
    assert len(ph[5]) == 4
    tagged = [_clip("a", phase=1), _clip("b", phase=3), _clip("c", phase=3)]
    ph = assign_phases(tagged)
    assert [c.path for c in ph[3]] == ["b", "c"]
    assert [c.path for c in ph[2]] == ["a"]  # empty phase falls back to the previous one
    assert len(ph[5]) == 3  # no clip names phase 5: the refinement mix is every clip


def test_val_split_auto_and_named(videos_root, probe_cache):
    index = build_index(videos_root)
    train, val, test = index.split("auto")
    assert [c.path for c in val] == ["clips/fire2.mp4"] and len(train) == 4 and test == []
    train, val, test = index.split("bikes.mp4")
    assert [c.name for c in val] == ["bikes.mp4"]
    with pytest.raises(DataError, match="--val-clips"):
        index.split("nope.mp4")


def test_test_clips_are_disjoint_from_train_and_val(videos_root, probe_cache):
    """Three splits (issue 14 / the guide): test clips are never trained on and never the val clips."""
    index = build_index(videos_root)
    train, val, test = index.split("auto", "auto")
    assert [c.path for c in test] == ["clips/chaplin.mp4"] and [c.path for c in val] == ["clips/fire2.mp4"]
    assert len(train) == 3 and not {c.path for c in train} & {c.path for c in val + test}
    _, _, test = index.split("auto", "bikes.mp4,airplane_field.mp4")
    assert [c.name for c in test] == ["bikes.mp4", "airplane_field.mp4"]
    with pytest.raises(DataError, match="--test-clips"):
        index.split("auto", "nope.mp4")
    with pytest.raises(DataError, match="share clips/fire2.mp4"):
        index.split("auto", "fire2.mp4")


def _cut(src, dst, fraction=0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def _moov_at_end(src, dst):
    """Remux (stream copy) with PyAV's default mp4 muxer, which writes the index (moov) after the data."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for pk in i.demux(i.streams.video[0]):
            if pk.dts is not None:
                pk.stream = s
                o.mux(pk)
    data = dst.read_bytes()
    assert data.find(b"moov") > data.find(b"mdat")  # really the other index position
    return dst


@pytest.fixture(scope="module")
def bad_clips(videos_root, tmp_path_factory):
    """fire2.mp4 cut in half with its index at the front (as shipped: faststart) and at the end, and a
    zero-byte file."""
    d = tmp_path_factory.mktemp("bad")
    fire = videos_root / "clips" / "fire2.mp4"
    assert 0 <= fire.read_bytes().find(b"moov") < fire.read_bytes().find(b"mdat")  # faststart
    return {"front": _cut(fire, d / "front.mp4"), "end": _cut(_moov_at_end(fire, d / "full_end.mp4"), d / "end.mp4"),
            "zero": _cut(fire, d / "zero.mp4", 0.0), "dir": d}


@pytest.mark.parametrize("kind", ["front", "end", "zero"])
def test_truncated_and_empty_clips_are_unreadable_at_probe(bad_clips, kind):
    with pytest.raises(DataError) as err:
        probe_clip(bad_clips[kind])
    msg = str(err.value)
    assert str(bad_clips[kind]) in msg and "\n" not in msg
    if kind == "front":  # the index still promises 2.38 s: the message says where the data ends
        assert "truncated" in msg and "2.38 s" in msg
    if kind == "zero":
        assert "0 bytes" in msg


def test_a_truncated_clip_that_got_past_the_probe_fails_at_decode_and_is_skipped(bad_clips, videos_root):
    """Before: 2 real frames then the last good frame repeated 14 times, silently. Now a decode that
    stops before the needed times is an error, and the dataset skips the clip into its BadSampleLog."""
    from videogen.data import _decode_times

    with pytest.raises(DataError, match="truncated or corrupt: decoding stopped"):
        _decode_times(bad_clips["front"], np.array([0.1, 0.5, 1.0, 1.5]))
    # the probe of the complete file, as a stale cache would hold it
    info = ClipInfo("front.mp4", "cut", 2.38, 10.505, 1280, 720, 25)
    good = ClipInfo("clips/fire2.mp4", "ok", 2.38, 10.505, 1280, 720, 25)
    root = bad_clips["dir"]
    (root / "clips").mkdir(exist_ok=True)
    shutil.copy(videos_root / "clips" / "fire2.mp4", root / "clips" / "fire2.mp4")
    ds = VideoClipDataset(root, [info, good], num_frames=8, size=16, fps=4.0, train=False)
    item = ds[0]
    assert item["caption"] == "ok" and ds.bad_log.paths() == ["front.mp4"]
    assert "truncated" in ds.bad_log.entries()["front.mp4"]


def test_complete_clips_still_decode_to_the_end(videos_root):
    for name in ("fire2.mp4", "bikes.mp4"):
        path = videos_root / "clips" / name
        info = probe_clip(path)
        clip = read_clip(path, 8, fps=None, stride=1, start=info["duration"], info=info)  # the last frames
        assert clip.shape[0] == 8


def test_data_error_is_the_shared_mlcore_class():
    """One DataError for every domain (it was a separate videogen class that mlcore-level handlers missed)."""
    import mlcore.data
    import videogen.data

    assert videogen.data.DataError is mlcore.data.DataError


def test_hflip_and_time_reverse_augment_training_windows_only(videos_root, tmp_path):
    """--hflip / --time-reverse with probability 1 mirror and reverse the very window the same seed
    draws without them (same RNG draws for the window and crop); evaluation windows are never touched."""
    import random

    shutil.copy(videos_root / "clips" / "fire2.mp4", tmp_path / "a.mp4")
    clip = ClipInfo("a.mp4", "fire", 2.38, 10.5, 1280, 720, 25)
    kw = dict(num_frames=4, size=16, fps=4.0, cache_frames=True)

    def item(train: bool, **aug) -> torch.Tensor:
        random.seed(7)
        return VideoClipDataset(tmp_path, [clip], train=train, samples=1, **kw, **aug)[0]["video"]  # (3, T, H, W)

    plain = item(True)
    assert torch.equal(item(True, hflip=1.0), plain.flip(-1))
    assert torch.equal(item(True, time_reverse=1.0), plain.flip(1))
    assert torch.equal(item(True, hflip=1.0, time_reverse=1.0), plain.flip(1).flip(-1))
    assert not torch.equal(plain.flip(-1), plain) and not torch.equal(plain.flip(1), plain)
    assert torch.equal(item(False, hflip=1.0, time_reverse=1.0), item(False))
    with pytest.raises(ValueError, match="hflip must be a probability"):
        VideoClipDataset(tmp_path, [clip], hflip=1.5, **kw)


def test_crop_scale_cuts_a_random_square_of_the_frames_loaded_at_a_larger_size(videos_root, tmp_path, monkeypatch):
    """--crop-scale 0.25 at 16 px loads frames at 32 px; the smallest crop (area 0.25) at the top-left is
    exactly the top-left 16 x 16 px of the 32 px window (no resampling), the largest is the whole window
    downscaled to 16 px; evaluation windows ignore the flag."""
    import random

    import torch.nn.functional as F

    shutil.copy(videos_root / "clips" / "fire2.mp4", tmp_path / "a.mp4")
    clip = ClipInfo("a.mp4", "fire", 2.38, 10.5, 1280, 720, 25)
    kw = dict(num_frames=4, fps=4.0, cache_frames=True, samples=1)
    monkeypatch.setattr(random, "randint", lambda a, b: a)  # window crop and scale crop at the top-left
    big = VideoClipDataset(tmp_path, [clip], size=32, train=True, **kw)
    scaled = VideoClipDataset(tmp_path, [clip], size=16, train=True, crop_scale=0.25, **kw)
    assert scaled.load_size == 32
    monkeypatch.setattr(random, "uniform", lambda a, b: a)  # window start 0, smallest area
    window = big[0]["video"]  # (3, 4, 32, 32)
    smallest = scaled[0]["video"]
    assert smallest.shape == (3, 4, 16, 16)
    torch.testing.assert_close(smallest, window[..., :16, :16], atol=1e-6, rtol=0)
    monkeypatch.setattr(random, "uniform", lambda a, b: a if a == 0.0 else b)  # window start 0, whole area
    whole = scaled[0]["video"]
    expected = F.interpolate(window.transpose(0, 1), size=(16, 16), mode="bilinear", align_corners=False,
                             antialias=True).transpose(0, 1)
    torch.testing.assert_close(whole, expected, atol=1e-6, rtol=0)
    assert VideoClipDataset(tmp_path, [clip], size=16, train=False, crop_scale=0.25, **kw).load_size == 16
    with pytest.raises(ValueError, match=r"crop_scale must be in \(0, 1\]"):
        VideoClipDataset(tmp_path, [clip], size=16, crop_scale=0.0, **kw)
