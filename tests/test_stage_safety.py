"""Stage safety: no file, disk or kill stops the music or loses what was made; no command
deletes what it did not write; every hostile input is one line.

Each test closes a class of failure (named in its name), with the case that was seen first.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from cli.main import main
from engine import staged as staged_module
from engine.audio import NullSink, WavRecorder
from engine.errors import MgsteerError
from engine.host import Host, HostConfig
from engine.inputs import MAX_DEPTH, read_json
from engine.params import ParameterBus
from engine.presets import load_preset
from engine.staged import STAGE, settle, staged
from sae.catalog import CATALOG_FILE, FORMAT, load_catalog
from sae.files import load_sae
from sae.train import claim_folder

GOOD_PRESET = {"format": "mgsteer-preset/1", "name": "p", "model": "tiny", "knobs": [], "features": {}}


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


# ---- inputs are bounded before they are read ----------------------------------------------------


@pytest.mark.parametrize(
    "text,needle",
    [
        (json.dumps({**GOOD_PRESET, "features": {"²": 1.0}}), "must be a plain decimal number"),
        (json.dumps({**GOOD_PRESET, "features": {"٣": 1.0}}), "must be a plain decimal number"),
        ("[" * 100_000 + "]" * 100_000, f"nests deeper than {MAX_DEPTH} levels"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"nests deeper than {MAX_DEPTH} levels"),
        ('{"seed": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_hostile_json_is_one_line(tmp_path, text, needle):
    path = tmp_path / "preset.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(MgsteerError, match=needle):
        load_preset(path)


def test_devices_fifos_and_huge_files_are_refused_before_a_byte_is_read(tmp_path, capsys):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (2 << 20))
    for preset, needle in (("/dev/zero", "not a regular file"), (fifo, "not a regular file"), (big, "the limit is")):
        started = time.perf_counter()
        assert main(["play", "--preset", str(preset), "--no-audio", "--seconds", "1"]) == 2
        assert needle in one_line(capsys) and time.perf_counter() - started < 10
    assert (
        main(["harvest", "--model", "tiny", "--prompts", str(fifo), "--layers", "1", "--out", str(tmp_path / "a")]) == 2
    )
    assert "not a regular file" in one_line(capsys)


def test_bad_output_paths_are_one_line_before_any_work(tmp_path, capsys):
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    cases = [
        (str(tmp_path / ("x" * 300 + ".wav")), "bytes long; at most 255"),
        (str(loop), "symbolic link loop"),
        ("~nosuchuser1234/x.wav", "no such user's home folder"),
    ]
    for out, needle in cases:
        assert main(["render", "--model", "tiny", "--seconds", "0.5", "--out", out]) == 2, out
        assert needle in one_line(capsys), out


def test_flags_whose_help_lists_choices_take_only_those(tmp_path, capsys):
    for flag, value in (("--device", "meta"), ("--device", "xla"), ("--device", "gpu"), ("--dtype", "half")):
        render = ["render", "--model", "tiny", "--seconds", "0.2", "--out", str(tmp_path / "x.wav")]
        assert main([*render, flag, value]) == 2
        assert f"unknown {flag[2:]} '{value}'" in one_line(capsys)


def test_an_audio_device_named_by_a_non_ascii_digit_is_a_name_not_an_index():
    from cli.live import device_arg

    assert device_arg("2") == 2
    assert device_arg("²") == "²"  # str.isdigit() is true for it and int() would raise
    assert device_arg("USB Audio") == "USB Audio"


def test_a_full_disk_in_render_leaves_no_partial_file(tmp_path, capsys, monkeypatch):
    import errno

    from engine import wavfile

    def full(self, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(wavfile.WavWriter, "write", full)
    out = tmp_path / "clip.wav"
    assert main(["render", "--model", "tiny", "--seconds", "0.3", "--out", str(out)]) == 2
    assert "the disk is full; nothing was written there" in one_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_an_oserror_anywhere_in_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    import errno

    import cli.main as cli_main

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "shard.safetensors"))

    parser = cli_main.build_parser
    monkeypatch.setattr(cli_main, "build_parser", lambda: _with_func(parser(), full))
    assert main(["info", "--model", "tiny"]) == 2
    assert "the disk is full ('" in one_line(capsys)


def _with_func(parser, func):
    original = parser.parse_args

    def parse_args(argv=None):
        args = original(argv)
        args.func = func
        return args

    parser.parse_args = parse_args
    return parser


# ---- SAE folders and catalogs are checked before they are trusted --------------------------------


def _sae_copy(tiny_sae_dir, tmp_path) -> Path:
    folder = tmp_path / "sae"
    shutil.copytree(tiny_sae_dir, folder)
    return folder


def test_an_sae_whose_sizes_disagree_is_refused_before_anything_is_allocated(tiny_sae_dir, tmp_path):
    folder = _sae_copy(tiny_sae_dir, tmp_path)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": 1e10}))
    with pytest.raises(MgsteerError, match="d_sae must be between 1 and"):
        load_sae(folder)
    (folder / "cfg.json").write_text(json.dumps({**cfg, "d_sae": cfg["d_sae"] * 1000}))
    with pytest.raises(MgsteerError, match=r"but cfg\.json implies"):
        load_sae(folder)


def test_an_sae_weights_file_with_a_foreign_tensor_is_one_line(tiny_sae_dir, tmp_path):
    folder = _sae_copy(tiny_sae_dir, tmp_path)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    save_file({**weights, "extra": torch.zeros(3)}, str(folder / "sae_weights.safetensors"))
    with pytest.raises(MgsteerError, match="holds unknown extra"):
        load_sae(folder)


def test_nan_feature_statistics_are_refused(tiny_sae_dir, tmp_path):
    folder = _sae_copy(tiny_sae_dir, tmp_path)
    stats = load_file(str(folder / "feature_stats.safetensors"))
    stats["max_activation"][0] = float("nan")
    save_file(stats, str(folder / "feature_stats.safetensors"))
    with pytest.raises(MgsteerError, match="NaN, inf or negative"):
        load_sae(folder)


@pytest.mark.parametrize(
    "features,needle",
    [
        ([{"id": 1, "examples": [{"audio": "../../../../etc/passwd"}]}], "must be a path inside the SAE folder"),
        ([{"id": 1, "examples": [{"audio": "/etc/passwd"}]}], "must be a path inside the SAE folder"),
        ([{"id": "²"}], "must be a feature id"),
        ([{"id": 1, "labels": {"clap": "x"}}], "must be a list of"),
        ({"a": 1}, "features must be a list"),
    ],
)
def test_a_catalog_that_points_outside_its_folder_or_lies_about_types_is_refused(tmp_path, features, needle):
    (tmp_path / CATALOG_FILE).write_text(json.dumps({"format": FORMAT, "features": features}))
    with pytest.raises(MgsteerError, match=needle):
        load_catalog(tmp_path)


# ---- no command deletes what it did not write ---------------------------------------------------


def test_overwrite_clears_only_its_own_output(tmp_path, capsys):
    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    (songs / "song.txt").write_text("la la")
    assert main(["world", "train", "--out", str(songs), "--overwrite", "--steps", "1", "--generations", "0"]) == 2
    assert "holds no world model" in one_line(capsys)
    assert (songs / "song.txt").is_file() and (songs / "sub").is_dir()
    sae = tmp_path / "sae"
    (sae / "acts").mkdir(parents=True)
    (sae / "acts" / "index.json").write_text("{}")
    (sae / "cfg.json").write_text("{}")
    (sae / "checkpoint-10").mkdir()
    claim_folder(sae, overwrite=True)
    assert sorted(p.name for p in sae.iterdir()) == ["acts"] and (sae / "acts" / "index.json").is_file()
    assert "kept what training did not write" in capsys.readouterr().out
    with pytest.raises(MgsteerError, match="holds no SAE or training run"):
        claim_folder(songs, overwrite=True)


def test_world_train_overwrite_keeps_foreign_files_and_resume_may_extend_the_steps(tmp_path, capsys):
    out = tmp_path / "world"
    args = ["world", "train", "--out", str(out), "--batch-size", "2", "--seconds", "1", "--generations", "0"]
    assert main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    (out / "song.txt").write_text("mine")
    assert main([*args, "--steps", "3", "--resume"]) == 0, capsys.readouterr().err
    assert json.loads((out / "train_state.json").read_text())["step"] == 3
    assert main([*args, "--steps", "1", "--overwrite"]) == 0
    assert (out / "song.txt").read_text() == "mine"
    assert json.loads((out / "train_state.json").read_text())["step"] == 1


# ---- a kill at any instant leaves a consistent folder -------------------------------------------


def test_a_save_cut_before_its_commit_leaves_the_previous_set(tmp_path):
    folder = tmp_path / "ckpt"
    with staged(folder) as stage:
        (stage / "a.txt").write_text("1")
        (stage / "b.txt").write_text("1")
    with pytest.raises(RuntimeError), staged(folder) as stage:
        (stage / "a.txt").write_text("2")
        raise RuntimeError("killed while writing b")
    assert (folder / "a.txt").read_text() == "1" and not (folder / STAGE).exists()
    # A kill (no clean-up at all) before the commit list is written: the stage is dropped.
    (folder / STAGE).mkdir()
    (folder / STAGE / "a.txt").write_text("3")
    settle(folder)
    assert (folder / "a.txt").read_text() == "1" and not (folder / STAGE).exists()


def test_a_commit_cut_halfway_is_finished_by_the_next_reader(tmp_path, monkeypatch):
    folder = tmp_path / "ckpt"
    with staged(folder) as stage:
        (stage / "a.txt").write_text("1")
        (stage / "b.txt").write_text("1")
    real_replace, moved = os.replace, []

    def dies_after_one(src, dst):
        if moved:
            raise KeyboardInterrupt  # the kill, between two renames
        moved.append(src)
        real_replace(src, dst)

    monkeypatch.setattr(staged_module.os, "replace", dies_after_one)
    with pytest.raises(KeyboardInterrupt), staged(folder) as stage:
        (stage / "a.txt").write_text("2")
        (stage / "b.txt").write_text("2")
    monkeypatch.setattr(staged_module.os, "replace", real_replace)
    assert {(folder / n).read_text() for n in ("a.txt", "b.txt")} == {"1", "2"}  # mixed, until read
    settle(folder)
    assert [(folder / n).read_text() for n in ("a.txt", "b.txt")] == ["2", "2"]


def test_a_world_checkpoint_killed_while_written_resumes_from_the_last_whole_one(tmp_path, monkeypatch, capsys):
    from sae.world import train as world_train

    out = tmp_path / "world"
    args = ["world", "train", "--out", str(out), "--batch-size", "2", "--seconds", "1", "--generations", "0"]
    assert main([*args, "--steps", "2", "--checkpoint-every", "1"]) == 0
    before = load_file(str(out / "model.safetensors"))
    real = world_train.save_file

    def killed(tensors, path):
        real(tensors, path)
        raise KeyboardInterrupt  # after the weights, before the optimizer and the state

    monkeypatch.setattr(world_train, "save_file", killed)
    assert main([*args, "--steps", "3", "--resume"]) == 130
    monkeypatch.setattr(world_train, "save_file", real)
    after = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((out / "train_state.json").read_text())["step"] == 2
    (out / "model.safetensors").write_bytes(b"\x00" * 100)  # a truncated model file: one line
    capsys.readouterr()
    assert main(["world", "eval", "--model", str(out), "--generations", "2"]) == 2
    assert "damaged" in one_line(capsys)


# ---- recording never stops the music ------------------------------------------------------------


def test_a_full_disk_ends_the_recording_not_the_music(tiny_lm, tmp_path):
    import errno

    bus = ParameterBus(knob_count=2)
    seen: list = []
    bus.subscribe(lambda feedback: feedback.status and seen.append(dict(feedback.status)))
    recorder = WavRecorder(tmp_path / "set.wav", tiny_lm.sample_rate)
    real_write, blocks = recorder._file.write, []

    def fills_up(block):
        if len(blocks) >= 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        blocks.append(len(block))
        real_write(block)

    recorder._file.write = fills_up
    host = Host(tiny_lm, bus, NullSink(tiny_lm.sample_rate), config=HostConfig(lookahead_ms=200), recorder=recorder)
    host.start()
    try:
        assert wait_for(lambda: host.status().recording is not None, timeout=60)
        played = host.status().position_s
        assert wait_for(lambda: host.status().position_s > played + 0.5, timeout=30)
        assert host.alive and host.error is None
        assert "the disk is full; the music goes on" in host.status().line()
        assert wait_for(lambda: any("recording" in s for s in seen))
    finally:
        host.stop()
        bus.close()
    with wave.open(str(tmp_path / "set.wav")) as w:
        assert w.getnframes() == sum(blocks)


def test_the_recorder_never_waits_on_the_disk(tmp_path):
    recorder = WavRecorder(tmp_path / "slow.wav", 32000)
    real_write = recorder._file.write
    recorder._file.write = lambda block: (time.sleep(0.2), real_write(block))
    started = time.perf_counter()
    for _ in range(10):
        recorder.write(np.zeros(640, dtype=np.float32))
    assert time.perf_counter() - started < 0.1  # queued, not written
    recorder.close()
    with wave.open(str(tmp_path / "slow.wav")) as w:
        assert w.getnframes() == 6400


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_a_killed_recording_is_a_valid_wav_up_to_its_last_block(tmp_path, how):
    out = tmp_path / "set.wav"
    cmd = [sys.executable, "-m", "cli.main", "play", "--model", "tiny", "--no-audio", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).parent.parent)  # fmt: skip
    try:
        assert wait_for(lambda: out.is_file() and out.stat().st_size > 44 + 32000, timeout=120)
        proc.send_signal(how)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    with wave.open(str(out)) as w:
        frames = w.getnframes()
        assert frames > 16000 and len(w.readframes(frames)) == 2 * frames
    if how != signal.SIGKILL:
        assert proc.returncode == 0 and f"stopping ({how.name})" in output and "recorded" in output


# ---- the window survives whatever a slot throws -------------------------------------------------


def test_fuzzed_presets_are_applied_or_one_line(tmp_path):
    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(preset=_json_documents())
    def run(preset):
        path = tmp_path / "p.json"
        path.write_text(json.dumps(preset))
        try:
            load_preset(path, feature_count=64)
        except MgsteerError as exc:
            assert "\n" not in str(exc)

    run()


def test_fuzzed_catalogs_are_loaded_or_one_line(tmp_path):
    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(features=st.lists(_json_values(), max_size=4), windows=_json_values())
    def run(features, windows):
        catalog = {"format": FORMAT, "features": features, "random_windows": windows}
        (tmp_path / CATALOG_FILE).write_text(json.dumps(catalog))
        try:
            loaded = load_catalog(tmp_path)
        except MgsteerError as exc:
            assert "\n" not in str(exc)
            return
        from gui.browser import catalog_rows  # what the window does with a catalog it accepted

        catalog_rows(loaded, str(tmp_path), 64)

    pytest.importorskip("PyQt6.QtWidgets")
    run()


def test_fuzzed_sae_folders_are_loaded_or_one_line(tiny_sae_dir, tmp_path):
    cfg = json.loads((Path(tiny_sae_dir) / "cfg.json").read_text())
    weights = load_file(str(Path(tiny_sae_dir) / "sae_weights.safetensors"))

    @settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(
        changes=st.dictionaries(st.sampled_from(sorted(cfg)), _json_values(), max_size=3),
        drop=st.sets(st.sampled_from(sorted(weights)), max_size=2),
        extra=st.booleans(),
        cut=st.one_of(st.none(), st.integers(0, 4000)),
    )
    def run(changes, drop, extra, cut):
        folder = tmp_path / "fuzzed"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        (folder / "cfg.json").write_text(json.dumps({**cfg, **changes}))
        tensors = {k: v for k, v in weights.items() if k not in drop} | ({"x": torch.ones(2)} if extra else {})
        save_file(tensors, str(folder / "sae_weights.safetensors"))
        if cut is not None:
            data = (folder / "sae_weights.safetensors").read_bytes()
            (folder / "sae_weights.safetensors").write_bytes(data[:cut])
        try:
            load_sae(folder)
        except MgsteerError as exc:
            assert "\n" not in str(exc)

    run()


def _json_values():
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(-(10**40), 10**40), st.floats(allow_nan=True), st.text(max_size=12)
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
        max_leaves=12,
    )


def _json_documents():
    """Presets near the real shape: right keys with wrong values, unicode keys, deep values."""
    knob = st.dictionaries(
        st.sampled_from(["label", "features", "range", "curve", "value", "²"]), _json_values(), max_size=5
    )
    features = st.dictionaries(st.one_of(st.text(max_size=4), st.integers(0, 99).map(str)), _json_values())
    return st.fixed_dictionaries(
        {"format": st.just("mgsteer-preset/1")},
        optional={
            "knobs": st.one_of(st.lists(knob, max_size=4), _json_values()),
            "features": st.one_of(features, _json_values()),
            "prompt": _json_values(),
            "smoothing_ms": _json_values(),
            "midi": _json_values(),
            "osc": _json_values(),
            "latency": _json_values(),
        },
    )


def test_read_json_refuses_what_python_json_would_choke_on(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("1" * 31)
    with pytest.raises(MgsteerError, match="an integer of 31 digits"):
        read_json(path, "x")
    path.write_text('{"a": 1e999}')
    assert read_json(path, "x") == {"a": float("inf")}  # a float past range is inf: the fields refuse it


# ---- live cost does not grow with the SAE ---------------------------------------------------------


def test_a_change_updates_the_steering_sum_by_what_changed_and_stays_exact(tiny_lm, tiny_sae, monkeypatch, request):
    from engine import steering
    from engine.steering import Steerer

    steerer = Steerer(tiny_lm, tiny_sae, cfg_doubled=True)
    request.addfinalizer(steerer.close)  # its hook must not outlive the test on the shared model
    d_sae = tiny_sae.cfg.d_sae
    rng = np.random.default_rng(0)
    alphas = {int(f): float(a) for f, a in zip(range(d_sae), rng.uniform(-3, 3, d_sae), strict=True)}
    steerer.vector_for(alphas)
    sizes = []
    real = Steerer._scaled_sum
    monkeypatch.setattr(
        Steerer, "_scaled_sum", lambda self, f, a, delta=False: sizes.append(len(f)) or real(self, f, a, delta)
    )
    for step in range(steering.REBUILD_EVERY):  # a fader on one feature, then a knob on another
        alphas[step % 7] = float(np.sin(step))
        vector = steerer.vector_for(alphas)
    assert set(sizes) == {1}  # each change read one decoder row, not d_sae of them
    beta = tiny_sae.stats.max_activation
    exact = (torch.tensor([alphas[f] for f in range(d_sae)]) * beta) @ tiny_sae.sae.W_dec
    assert torch.allclose(vector.float(), exact, atol=1e-4 * float(exact.abs().max()))
    alphas[0] = 1.0
    steerer.vector_for(alphas)  # after REBUILD_EVERY updates: a sum from scratch
    assert sizes[-1] == d_sae
    assert float(steerer.vector_for({}).abs().max()) == 0.0  # nothing steered is exactly nothing


def test_a_preset_reaches_the_generation_thread_as_one_snapshot(tmp_path):
    from engine.presets import apply_preset, parse_preset

    bus = ParameterBus(knob_count=4, feature_count=64)
    preset = parse_preset(
        {**GOOD_PRESET, "prompt": "new", "features": {"3": 1.0, "4": 2.0},
         "knobs": [{"label": f"k{i}", "features": [[i, 1.0]], "value": 0.5} for i in range(4)]},
        "p", 64, 4,
    )  # fmt: skip
    before = bus.snapshot()
    seen = []
    original = bus._change

    def spying(*args, **kwargs):
        original(*args, **kwargs)
        seen.append(bus.snapshot())  # what the generation thread would see after each setter

    bus._change = spying
    apply_preset(preset, bus)
    assert all(s is before for s in seen)  # no half-applied state is ever visible
    after = bus.snapshot()
    assert after.prompt == "new" and [k.label for k in after.knobs] == ["k0", "k1", "k2", "k3"]
    bus.close()


def test_a_reset_storm_restarts_the_music_a_few_times_not_at_every_step(tiny_lm):
    from engine.host import RESET_GAP_S

    bus = ParameterBus(knob_count=2)
    host = Host(tiny_lm, bus, NullSink(tiny_lm.sample_rate), config=HostConfig(lookahead_ms=300))
    loops = []
    original = host._new_loop
    host._new_loop = lambda snap: (loops.append(host._generated), original(snap))
    host.start()
    try:
        assert wait_for(lambda: host.status().position_s > 0.2, timeout=60)
        first = host.status().generated_s
        end = time.perf_counter() + 3.0
        while time.perf_counter() < end:
            bus.reset()
            time.sleep(1 / 180)
        generated = host.status().generated_s - first
        assert host.alive and generated > 1.0
        assert len(loops) - 1 <= generated / RESET_GAP_S + 2
    finally:
        host.stop()
        bus.close()
