"""Robustness: no value stops the music, no command silently mixes or loses data, and every
bad input is one line and exit status 2, checked before any long work."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import alive_features, wait_for
from planted import planted_dictionary, planted_store
from test_osc import Client

from cli.main import main
from engine.audio import NullSink
from engine.errors import MgsteerError
from engine.host import Host, HostConfig
from engine.params import ParameterBus
from engine.steering import Steerer
from engine.tokenloop import SamplingConfig, TokenLoop
from osc.server import OscServer
from sae.files import load_sae, save_sae
from sae.store import ActivationStore
from sae.train import TrainConfig, Trainer


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgsteer: error: "), err
    return err[0]


# ---- the hot path: a steering edit that is not finite never stops generation ----------------------
def test_a_non_finite_edit_is_run_again_unsteered_token_for_token(tiny_lm, tiny_sae):
    plain = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3)).frames(12)
    with Steerer(tiny_lm, tiny_sae, cfg_doubled=True) as steerer:
        for poison in (float("inf"), float("nan"), 1e30):
            steerer.set_vector(torch.full((tiny_lm.hidden_size,), poison))
            loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3))
            steerer.attach(loop)
            assert torch.equal(loop.frames(12), plain)  # the retry is exactly the unsteered step
            assert loop.nonfinite_steps == 12 + tiny_lm.num_codebooks - 1
        steerer.set_vector(torch.zeros(tiny_lm.hidden_size))
        loop = TokenLoop(tiny_lm, ["x"], SamplingConfig(seed=3))
        steerer.attach(loop)
        assert torch.equal(loop.frames(12), plain) and loop.nonfinite_steps == 0


@pytest.fixture()
def exploding_sae_dir(tiny_sae_dir, tmp_path):
    """An SAE file whose first feature's decoder row is astronomically large: any strength of
    it overflows the residual stream."""
    loaded = load_sae(tiny_sae_dir)
    sae = loaded.sae
    feature = alive_features(loaded, 1)[0]
    with torch.no_grad():
        sae.W_dec[feature] = 1e36
    return save_sae(sae, tmp_path / "exploding", loaded.stats), feature


def test_the_host_plays_on_through_non_finite_steps_and_reports_them(tiny_lm, exploding_sae_dir):
    folder, feature = exploding_sae_dir
    sae = load_sae(folder)
    bus = ParameterBus(knob_count=2, feature_count=sae.cfg.d_sae)
    host = Host(tiny_lm, bus, NullSink(tiny_lm.sample_rate), sae, HostConfig())
    host.start()
    try:
        assert wait_for(lambda: host.status().position_s > 0.3, timeout=20)
        bus.set_feature(feature, 1.0)
        assert wait_for(lambda: host.status().nonfinite_steps > 5, timeout=20)
        position = host.status().position_s
        assert wait_for(lambda: host.status().position_s > position + 0.3, timeout=20)
        alive, error, status = host.alive, host.error, host.status()
    finally:
        host.stop()
        bus.close()
    assert alive and error is None
    assert "non-finite steps" in status.line()


def test_one_osc_value_cannot_end_the_performance(tiny_lm, tiny_sae):
    """The issue's `/mgsteer/feature/105 f 1e30`, then every other far value, while playing."""
    feature = alive_features(tiny_sae, 1)[0]
    bus = ParameterBus(knob_count=2, feature_count=tiny_sae.cfg.d_sae)
    bus.configure_knob(0, features=[(feature, 10.0)], lo=-50, hi=50)
    host = Host(tiny_lm, bus, NullSink(tiny_lm.sample_rate), tiny_sae, HostConfig())
    server = OscServer(bus, port=0, status=lambda: {"nonfinite_steps": host.status().nonfinite_steps})
    host.start()
    server.start()
    client = Client(server.address)
    try:
        for value in (1e30, -1e30, 3.4e38, -3.4e38):
            client.send(f"/mgsteer/feature/{feature}", value)
            client.send("/mgsteer/knob/0", value)
            time.sleep(0.3)
        assert bus.snapshot().alphas()[feature] in (50.0, -50.0)
        position = host.status().position_s
        assert wait_for(lambda: host.status().position_s > position + 0.5, timeout=20)
        client.send("/mgsteer/status")
        status = [m for m in client.messages(1.0) if m.address == "/mgsteer/status"]
        alive, error = host.alive, host.error
    finally:
        server.stop()
        host.stop()
        bus.close()
    assert alive and error is None and status
    assert any(p.startswith("nonfinite_steps=") for p in status[0].params)


# ---- the command line: far values are one line ----------------------------------------------------
def test_far_values_on_the_command_line_are_one_line(tiny_sae_dir, tmp_path, capsys):
    out = str(tmp_path / "x.wav")
    render = ["render", "--model", "tiny", "--seconds", "0.2", "--out", out, "--sae", str(tiny_sae_dir)]
    assert main([*render, "--steer", "1=1e20"]) == 2
    assert "between -50 and 50" in one_line(capsys)
    for smoothing in ("nan", "-5", "inf"):
        assert main(["play", "--model", "tiny", "--no-audio", "--seconds", "1", "--smoothing-ms", smoothing]) == 2
        assert "argument --smoothing-ms" in one_line(capsys)
    assert main(["play", "--model", "tiny", "--no-audio", "--osc", "--osc-port", "70000"]) == 2
    assert "argument --osc-port: value must be between 0 and 65535" in one_line(capsys)
    assert not (tmp_path / "x.wav").exists()


def test_a_huge_prompt_is_refused_in_tokens_before_it_reaches_the_encoder(tmp_path, capsys):
    words = " ".join(["melody"] * 20_000)
    started = time.perf_counter()
    assert main(["render", "--model", "tiny", "--prompt", words, "--out", str(tmp_path / "x.wav")]) == 2
    assert "the limit is 256 tokens" in one_line(capsys)
    short = " ".join(["a b"] * 200)
    assert main(["render", "--model", "tiny", "--prompt", short, "--out", str(tmp_path / "x.wav")]) == 2
    assert "tokens long; the limit is 256" in one_line(capsys)  # short in characters, long in tokens
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize(
    ("name", "needle"),
    [("folder", "is a folder"), ("noext", "has no extension"), ("x.mp3", "has '.mp3'; this writes .wav")],
)
def test_render_checks_its_output_before_loading_the_model(tmp_path, capsys, monkeypatch, name, needle):
    (tmp_path / "folder").mkdir()
    monkeypatch.setattr("engine.model.load_musicgen", lambda *a, **k: pytest.fail("loaded the model first"))
    assert main(["render", "--model", "tiny", "--out", str(tmp_path / name)]) == 2
    assert needle in one_line(capsys)


def test_demo_and_eval_steer_refuse_a_file_as_their_folder_before_any_work(tiny_sae_dir, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    assert main(["demo", "--out", str(taken)]) == 2
    assert "is an existing file; give a folder" in one_line(capsys)
    started = time.perf_counter()
    argv = ["eval-steer", "--model", "tiny", "--sae", str(tiny_sae_dir), "--features", "0", "--concept", "0=x"]
    assert main([*argv, "--scorer", "classifier", "--classifier-model", "tiny", "--out", str(taken)]) == 2
    assert "is an existing file" in one_line(capsys)
    assert time.perf_counter() - started < 5  # refused before rendering anything
    assert taken.read_text() == "mine"


def test_eval_steer_says_when_too_few_pairs_cannot_reach_significance(tiny_sae_dir, tmp_path, capsys):
    argv = ["eval-steer", "--model", "tiny", "--sae", str(tiny_sae_dir), "--features", "0", "--concept", "0=x",
            "--scorer", "classifier", "--classifier-model", "tiny", "--seconds", "0.2", "--seeds", "1",
            "--no-prompt-baseline", "--out", str(tmp_path / "ev")]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "give 4 pairs; the Wilcoxon test needs ≥ 5" in err


def test_play_records_exactly_the_seconds_asked_for(tmp_path, capsys):
    out = tmp_path / "rec.wav"
    assert main(["play", "--model", "tiny", "--no-audio", "--seconds", "1", "--out", str(out)]) == 0
    info = sf.info(str(out))
    assert info.frames == info.samplerate  # 1.0 s, not the lookahead too
    assert "recorded 1.0 s" in capsys.readouterr().out


def test_a_presets_osc_port_is_used(tiny_sae_dir, tmp_path, capsys):
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    preset = {"format": "mgsteer-preset/1", "model": "tiny", "osc": {"host": "127.0.0.1", "port": port}}
    (tmp_path / "p.json").write_text(json.dumps(preset))
    argv = ["play", "--preset", str(tmp_path / "p.json"), "--no-audio", "--seconds", "0.5", "--osc"]
    assert main([*argv, "--presets-dir", str(tmp_path / "presets")]) == 0
    assert f"OSC on 127.0.0.1:{port}" in capsys.readouterr().out


# ---- OSC: the server survives any message ------------------------------------------------------
@pytest.fixture()
def served(tmp_path):
    from engine.presets import PresetFolder
    from osc.server import preset_handler

    bus = ParameterBus(knob_count=4, feature_count=100)
    folder = PresetFolder(tmp_path / "presets")
    server = OscServer(bus, port=0, status=lambda: {}, presets=preset_handler(bus, "tiny", None, 100, folder))
    server.start()
    yield bus, server, Client(server.address)
    server.stop()
    bus.close()


def _status_answers(client) -> bool:
    client.send("/mgsteer/status")
    return any(m.address == "/mgsteer/status" for m in client.messages(0.5))


def test_the_messages_that_killed_the_server_are_answered_and_it_serves_on(served, tmp_path):
    _, server, client = served
    client.send("/mgsteer/subscribe", "127.0.0.1", 70000)
    client.send("/mgsteer/preset/save", str(tmp_path))  # a folder
    client.send("/mgsteer/preset/save", str(tmp_path / "any.txt"))
    errors = [m.params[0] for m in client.messages(0.5) if m.address == "/mgsteer/error"]
    assert len(errors) == 3, errors
    assert _status_answers(client) and server._thread.is_alive()
    assert not (tmp_path / "any.txt").exists()


def _bundle(*elements: bytes, timetag: bytes = b"\x00" * 7 + b"\x01") -> bytes:
    out = b"#bundle\x00" + timetag
    for element in elements:
        out += len(element).to_bytes(4, "big") + element
    return out


MALFORMED = [
    _bundle(b"/x\x00\x00,f\x00\x00"),  # a float with no bytes
    b"#bundle\x00" + b"\x00" * 8 + (1000).to_bytes(4, "big") + b"/x\x00\x00",  # element longer than the datagram
    _bundle(_bundle(b"\x00\xff\x00\x00")),  # a bundle holding a broken bundle
    _bundle(b"/mgsteer/knob/0\x00,i\x00\x00"),  # an int with no bytes
    b"/mgsteer/knob/0\x00,b\x00\x00\x7f\xff\xff\xff",  # a blob claiming 2 GB
    b"/mgsteer/knob/0\x00,\xff\x00\x00",  # an unknown type tag
    b"\xff" * 64,
    b"",
]


def test_malformed_bundles_are_counted_and_answered(served):
    _, server, client = served
    for data in MALFORMED:
        client.raw(data)
    errors = [m.params[0] for m in client.messages(0.8) if m.address == "/mgsteer/error"]
    assert len(errors) == len(MALFORMED) and all("unreadable OSC datagram" in e for e in errors), errors
    assert server.stats.malformed == len(MALFORMED) and server.stats.failed == 0
    assert _status_answers(client)


def test_a_handler_bug_costs_one_message_not_the_server(served, monkeypatch):
    bus, server, client = served

    def broken(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(bus, "set_prompt", broken)
    client.send("/mgsteer/prompt", "calm")
    errors = [m.params[0] for m in client.messages(0.5) if m.address == "/mgsteer/error"]
    assert errors == ["/mgsteer/prompt: internal error (ZeroDivisionError: a bug)"]
    assert server.stats.failed == 1
    client.send("/mgsteer/status")
    status = next(m for m in client.messages(0.5) if m.address == "/mgsteer/status")
    assert "osc_failed=1" in status.params


# ---- output folders know what they hold --------------------------------------------------------
@pytest.fixture()
def songs(tmp_path):
    def write(folder, hz=(220.0, 330.0), seconds=2.0):
        folder.mkdir(parents=True, exist_ok=True)
        for i, f in enumerate(hz):
            t = np.arange(int(32000 * seconds)) / 32000
            sf.write(str(folder / f"tone{i}.wav"), 0.3 * np.sin(2 * np.pi * f * t), 32000)
        return folder

    return write


def harvest(audio, out, *extra):
    return main(["harvest", "--model", "tiny", "--audio", str(audio), "--layers", "1", "--out", str(out), *extra])


def test_a_store_refuses_other_inputs_and_resumes_its_own(songs, tmp_path, capsys):
    a, b = songs(tmp_path / "a"), songs(tmp_path / "b", hz=(440.0,))
    acts = tmp_path / "acts"
    assert harvest(a, acts, "--clip-seconds", "1") == 0
    assert "harvested 4/4 clips" in capsys.readouterr().out
    assert harvest(a, acts, "--clip-seconds", "1") == 0  # the same inputs: resumed, nothing to do
    assert "harvested 4/4 clips" in capsys.readouterr().out
    assert harvest(b, acts, "--clip-seconds", "1") == 2
    line = one_line(capsys)
    assert "harvested from other inputs" in line and "folder" in line and "use a new --out folder" in line
    assert harvest(a, acts, "--clip-seconds", "0.5") == 2
    assert "clip_seconds 1.0 then, 0.5 now" in one_line(capsys)
    time.sleep(0.01)
    songs(a, hz=(220.0, 331.0), seconds=2.5)  # a different file under the same name
    assert harvest(a, acts, "--clip-seconds", "1") == 2
    assert "the files differ (2 then, 2 now)" in one_line(capsys)
    assert len(ActivationStore(acts).clips) == 4  # nothing was added


def test_harvest_inputs_that_were_accepted_in_silence(songs, tmp_path, capsys):
    a = songs(tmp_path / "a")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("simple melody\n")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\x00\xff\xfe\x89PNG")
    cases = [
        (["--audio", str(a), "--layers", ""], "bad --layers list ''"),
        (["--audio", str(a), "--layers", "1,1"], "an id is listed twice"),
        (["--audio", str(a), "--layers", "1", "--clip-seconds", "0"], "--clip-seconds: value must be between 0.1"),
        (["--audio", str(a), "--layers", "1", "--shard-rows", "0"], "argument --shard-rows"),
        (["--audio", str(a), "--layers", "1", "--clip-seconds", "100"], "--clip-seconds 100 is longer than one pass"),
        (["--prompts", str(prompts), "--layers", "1", "--seconds", "100"], "--seconds 100 is longer than one pass"),
        (["--prompts", str(binary), "--layers", "1"], "is not a UTF-8 text file"),
    ]
    for extra, needle in cases:
        assert main(["harvest", "--model", "tiny", "--out", str(tmp_path / "acts"), *extra]) == 2, extra
        assert needle in one_line(capsys), extra
    acts = tmp_path / "good"
    assert harvest(a, acts) == 0
    (acts / "index.json").write_text("{not json")
    assert harvest(a, acts) == 2
    assert "is damaged" in one_line(capsys)
    assert main(["train", "--acts", str(acts), "--out", str(tmp_path / "sae")]) == 2
    assert "is damaged" in one_line(capsys)


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    true = planted_dictionary(d=32, features=64)
    return planted_store(tmp_path_factory.mktemp("robust") / "acts", true, rows=6000)


SMALL = ["--k", "4", "--expansion", "2", "--batch-size", "256", "--device", "cpu", "--log-every", "10"]


def train(store, out, *extra):
    return main(["train", "--acts", str(store), "--out", str(out), *SMALL, *extra])


def test_train_claims_its_folder(small_store, tmp_path, capsys):
    out = tmp_path / "sae"
    assert train(small_store, out, "--steps", "20") == 0
    (out / "features.json").write_text('{"features": [{"id": 0, "labels": {"x": [{"label": "stale"}]}}]}')
    (out / "examples").mkdir()
    capsys.readouterr()
    assert train(small_store, out, "--steps", "20") == 2
    assert "is not empty; --overwrite to clear it" in one_line(capsys)
    assert train(small_store, out, "--steps", "20", "--overwrite") == 0
    assert not (out / "features.json").exists() and not (out / "examples").exists()
    assert (out / "sae_weights.safetensors").is_file()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    assert train(small_store, other, "--overwrite") == 2
    assert "holds no SAE or training run" in one_line(capsys)
    assert (other / "thesis.tex").read_text() == "do not delete"
    assert train(small_store, tmp_path / "x", "--k", "1000") == 2
    assert "--k 1000 exceeds the SAE's 64 features" in one_line(capsys)
    for bad, needle in (("a,b", "must be a number"), ("0.3,0.1", "lo must not exceed hi"), ("0.5", "use lo,hi")):
        assert train(small_store, tmp_path / "y", "--filter", bad) == 2
        assert needle in one_line(capsys)
    assert main(["label", "--sae", str(out), "--acts", str(small_store), "--limit", "-1"]) == 2
    assert "argument --limit" in one_line(capsys)


def test_resume_checks_its_settings_and_logs_each_step_once(small_store, tmp_path, capsys):
    out = tmp_path / "sae"
    cfg = TrainConfig(k=4, expansion=2, steps=60, batch_size=256, checkpoint_every=20, log_every=10, device="cpu")
    Trainer(ActivationStore(small_store), out, cfg).run(stop_after=35)  # killed after the step-20 checkpoint
    logged = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert logged == [10, 20, 30]
    assert train(small_store, out, "--steps", "60", "--k", "8", "--resume") == 2
    assert "changed: --k 4 → 8" in one_line(capsys)
    assert train(small_store, out, "--steps", "60", "--checkpoint-every", "20", "--resume") == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [x["step"] for x in lines if not x.get("final")]
    assert steps == [10, 20, 30, 40, 50, 60]  # 30 was logged before the kill, and once only


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(small_store, tmp_path):
    out = tmp_path / "sae"
    cfg = TrainConfig(k=4, expansion=2, steps=60, batch_size=256, checkpoint_every=20, log_every=10, device="cpu")
    Trainer(ActivationStore(small_store), out, cfg).run(stop_after=25)
    before = (out / "checkpoint-20" / "trainer_state.pt").read_bytes()
    wild = TrainConfig(**{**cfg.__dict__, "lr": 1e20})
    with pytest.raises(MgsteerError) as err:
        Trainer(ActivationStore(small_store), out, wild).run(resume=True)
    expected = r"training diverged at step 2[12] \(the loss is not finite\) with learning rate 1e\+20"
    assert re.search(expected, str(err.value))
    assert "the last good checkpoint (checkpoint-20) is kept" in str(err.value)
    assert (out / "checkpoint-20" / "trainer_state.pt").read_bytes() == before
    assert not (out / "sae_weights.safetensors").exists()
    with pytest.raises(MgsteerError, match="no checkpoint was written yet"):
        Trainer(ActivationStore(small_store), tmp_path / "fresh", wild).run()
