"""Property-based fuzzing of the two doors a user or a peer can knock on.

- The command line: any mix of hostile and ordinary values for every numeric and path flag of
  render, play, harvest, train, label, eval-steer, browse and info ends as "applied" (exit 0)
  or as exactly one `mgsteer: error: …` line with exit 2: never a traceback.
- OSC, while the host plays: any address, any arguments of any OSC type, any bytes, is applied
  or answered with `/mgsteer/error`; the server never hits an internal error, always answers
  `/mgsteer/status` afterwards, and the music never stops.

The examples are seeded (derandomized), so a run is repeatable; `FUZZ_EXAMPLES` scales them.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import socket
import time

import pytest
from conftest import alive_features, wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from planted import planted_dictionary, planted_store
from pythonosc.osc_message_builder import OscMessageBuilder

from cli.main import main
from engine.audio import NullSink
from engine.host import Host, HostConfig
from engine.params import ParameterBus
from engine.presets import PresetFolder
from osc.server import OscServer, preset_handler

SCALE = float(os.environ.get("FUZZ_EXAMPLES", "1"))
FUZZ = settings(
    max_examples=int(100 * SCALE),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NUMBERS = ["nan", "inf", "-inf", "1e309", "1e30", "-1e30", "-1", "0", "", "x", "1,5", "0x10", "1e-300", "3.5"]
INTEGERS = ["-1", "0", "1", "2", "99999999999999999999999", "1.5", "", "x", "nan", "65536", "70000"]


def flag_values(extra: list[str]) -> st.SearchStrategy[str]:
    return st.sampled_from(extra) | st.text(max_size=12)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_sae_dir):
    """Real inputs for the flags that need them: an SAE, a store, prompts, a file, a folder."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "prompts.txt").write_text("simple melody\ntechno\n")
    (root / "binary.bin").write_bytes(bytes(range(256)))
    (root / "file.txt").write_text("a file")
    (root / "folder").mkdir()
    store = planted_store(root / "store", planted_dictionary(d=16, features=32), rows=1200)
    return {
        "root": root,
        "sae": str(tiny_sae_dir),
        "store": str(store),
        "paths": [str(root / "file.txt"), str(root / "folder"), str(root / "binary.bin"), str(root / "none"), ""],
    }


def out_values(world, suffix: str) -> st.SearchStrategy[str]:
    root = world["root"]
    return st.sampled_from([*world["paths"], str(root / f"new{suffix}"), str(root / "x.mp3"), str(root / "noext")])


def run_cli(argv: list[str]) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def assert_applied_or_one_line(argv: list[str]) -> None:
    code, err = run_cli(argv)  # an exception here is the failure: a traceback for the user
    assert code in (0, 2), (argv, code, err)
    if code == 2:
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
        assert len(lines) == 1 and lines[0].startswith("mgsteer: error: "), (argv, err)


def options(table: dict[str, st.SearchStrategy[str]]) -> st.SearchStrategy[list[str]]:
    """Up to four of the command's flags, each with a drawn value."""
    return st.lists(st.sampled_from(sorted(table)), max_size=4, unique=True).flatmap(
        lambda flags: st.tuples(*[table[f].map(lambda v, f=f: [f, v]) for f in flags]).map(
            lambda pairs: [x for pair in pairs for x in pair]
        )
    )


SAMPLING = {
    "--seed": flag_values([*INTEGERS, "0"]),
    "--guidance": flag_values([*NUMBERS, "1", "3"]),
    "--top-k": flag_values([*INTEGERS, "250"]),
    "--temperature": flag_values([*NUMBERS, "1"]),
}


@pytest.fixture(scope="module")
def render_flags(world):
    return {
        **SAMPLING,
        "--seconds": flag_values([*NUMBERS, "0.1", "999"]),
        "--steer": flag_values(["1=1e30", "1=nan", "x", "=", "99999=1", "1=0.5", "-1=1", "1=-51"]),
        "--prompt": flag_values(["", " ", "x" * 5000, "word " * 400, "\x00", "simple"]),
        "--out": out_values(world, ".wav"),
        "--sae": st.sampled_from([world["sae"], *world["paths"]]),
        "--mode": flag_values(["add", "clamp"]),
        "--device": flag_values(["cpu", "cuda", "tpu", "mps"]),
        "--dtype": flag_values(["float16", "bfloat16", "int8", "auto"]),
    }


@FUZZ
@given(data=st.data())
def test_fuzz_render(render_flags, world, data):
    argv = ["render", "--model", "tiny", "--seconds", "0.1", "--out", str(world["root"] / "r.wav")]
    assert_applied_or_one_line([*argv, *data.draw(options(render_flags))])


@pytest.fixture(scope="module")
def play_flags(world):
    return {
        **SAMPLING,
        "--seconds": flag_values([*NUMBERS, "0.2"]),
        "--smoothing-ms": flag_values([*NUMBERS, "50"]),
        "--lookahead-ms": flag_values([*NUMBERS, "300"]),
        "--chunk": flag_values([*INTEGERS, "8"]),
        "--osc-port": flag_values([*INTEGERS, "0"]),
        "--meters": flag_values(["", "1,1", "x", "-1", "1,2", "99999"]),
        "--steer": flag_values(["1=1e30", "1=nan", "1=0.5"]),
        "--sae": st.sampled_from([world["sae"], *world["paths"]]),
        "--preset": st.sampled_from(world["paths"]),
        "--out": out_values(world, ".wav"),
        "--prompt": flag_values(["", "x" * 5000, "calm"]),
    }


@FUZZ
@given(data=st.data())
def test_fuzz_play(play_flags, world, data):
    argv = ["play", "--model", "tiny", "--no-audio", "--seconds", "0.2", "--osc", "--osc-port", "0"]
    argv += ["--presets-dir", str(world["root"] / "presets")]
    assert_applied_or_one_line([*argv, *data.draw(options(play_flags))])


@pytest.fixture(scope="module")
def harvest_flags(world):
    return {
        "--layers": flag_values(["", "1,1", "x", "-1", "1", "99", "1,2"]),
        "--clip-seconds": flag_values([*NUMBERS, "1"]),
        "--seconds": flag_values([*NUMBERS, "0.2", "100"]),
        "--shard": flag_values(["0/1", "1/1", "0/0", "x", "2/3", "-1/2"]),
        "--shard-rows": flag_values([*INTEGERS, "64"]),
        "--store-dtype": flag_values(["float16", "float64"]),
        "--seed": flag_values(INTEGERS),
        "--out": st.sampled_from([*world["paths"], world["store"]]),
        "--captions": st.sampled_from(world["paths"]),
    }


@FUZZ
@given(data=st.data(), n=st.integers(0, 10**6))
def test_fuzz_harvest(harvest_flags, world, data, n):
    source = ["--prompts", data.draw(st.sampled_from([str(world["root"] / "prompts.txt"), world["paths"][2]]))]
    out = str(world["root"] / f"acts{n}")
    argv = ["harvest", "--model", "tiny", *source, "--layers", "1", "--seconds", "0.2", "--out", out]
    assert_applied_or_one_line([*argv, *data.draw(options(harvest_flags))])


@pytest.fixture(scope="module")
def train_flags(world):
    return {
        "--k": flag_values([*INTEGERS, "4", "1000"]),
        "--expansion": flag_values([*INTEGERS, "2"]),
        "--steps": flag_values(["0", "-1", "x", "nan", "1", "3"]),
        "--batch-size": flag_values([*INTEGERS, "64", "100000"]),
        "--lr": flag_values([*NUMBERS, "1e-3"]),
        "--filter": flag_values(["a,b", "0.3,0.1", "0.5", "nan,1", "0,1", "-1,2"]),
        "--warmup-steps": flag_values(INTEGERS),
        "--dead-steps": flag_values(INTEGERS),
        "--checkpoint-every": flag_values(INTEGERS),
        "--log-every": flag_values(INTEGERS),
        "--layer": flag_values([*INTEGERS, "0", "5"]),
        "--acts": st.sampled_from([world["store"], *world["paths"]]),
    }


@FUZZ
@given(data=st.data(), n=st.integers(0, 10**6))
def test_fuzz_train(train_flags, world, data, n):
    drawn = data.draw(options(train_flags)) + data.draw(st.sampled_from([[], ["--resume"], ["--overwrite"]]))
    argv = ["train", "--acts", world["store"], "--out", str(world["root"] / f"sae{n}"), "--steps", "2"]
    argv += ["--batch-size", "64", "--k", "4", "--expansion", "2", "--device", "cpu"]
    assert_applied_or_one_line([*argv, *drawn])


@pytest.fixture(scope="module")
def tool_flags(world):
    return {
        "--limit": flag_values(INTEGERS),
        "--top-n": flag_values(INTEGERS),
        "--window-s": flag_values(NUMBERS),
        "--negatives": flag_values(INTEGERS),
        "--features": flag_values(["", "1,1", "x", "-1", "all", "0"]),
        "--labelers": flag_values(["descriptors", "nope", ""]),
        "--shard": flag_values(["0/1", "0/0", "x"]),
        "--llm-timeout": flag_values(NUMBERS),
        "--seeds": flag_values(INTEGERS),
        "--alpha": flag_values(NUMBERS),
        "--concept": flag_values(["0=x", "x", "0=", "=y"]),
        "--sae": st.sampled_from([world["sae"], *world["paths"]]),
        "--acts": st.sampled_from(world["paths"]),
        "--out": out_values(world, ".html"),
    }


@FUZZ
@given(data=st.data())
def test_fuzz_label_browse_eval_info(tool_flags, world, data):
    command = data.draw(st.sampled_from(["label", "browse", "eval-steer", "info"]))
    allowed = {
        "label": {"--limit", "--top-n", "--window-s", "--negatives", "--features", "--labelers", "--shard", "--sae",
                  "--acts", "--llm-timeout"},
        "browse": {"--sae", "--out"},
        "eval-steer": {"--seeds", "--alpha", "--concept", "--features", "--sae", "--out", "--llm-timeout"},
        "info": {"--sae"},
    }[command]  # fmt: skip
    drawn = data.draw(options({k: v for k, v in tool_flags.items() if k in allowed}))
    base = {
        "label": ["--sae", world["sae"], "--acts", world["paths"][1]],
        "browse": ["--sae", world["sae"]],
        "eval-steer": ["--model", "tiny", "--sae", world["paths"][3], "--features", "0"],
        "info": ["--model", "tiny"],
    }[command]
    assert_applied_or_one_line([command, *base, *drawn])


# ---- OSC while playing ----------------------------------------------------------------------------
ADDRESSES = [
    "/mgsteer/knob/{n}", "/mgsteer/knob/{n}/assign", "/mgsteer/knob/{n}/label", "/mgsteer/feature/{n}",
    "/mgsteer/prompt", "/mgsteer/transport/play", "/mgsteer/transport/stop", "/mgsteer/transport/reset",
    "/mgsteer/melody/follow", "/mgsteer/preset/load", "/mgsteer/preset/save", "/mgsteer/subscribe", "/mgsteer/status",
    "/mgsteer/{n}",
    "/other", "/mgsteer/knob/{n}/{n}",
]  # fmt: skip
NUMBERS_IN_ADDRESSES = st.sampled_from(["0", "1", "3", "7", "99", "99999", "-1", "x", "0001", "9" * 30, ""])


def _elsewhere(text: str) -> bool:
    """An IP address off this machine: a fuzzed /subscribe must never send feedback there."""
    try:
        return not ipaddress.ip_address(text.strip()).is_loopback
    except ValueError:
        return False


ARGUMENTS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e30, -1e30, 3.4e38, 0.5, 0.0, 1.0, -0.0]),
    st.text(max_size=40).filter(lambda text: "\x00" not in text and not _elsewhere(text)),  # NUL ends an OSC string
    st.sampled_from(["../../x", "/etc/passwd", "mine", "x" * 2000, "127.0.0.1", "::1", "calm piano"]),
    st.binary(min_size=1, max_size=32),
    st.booleans(),
    st.none(),
)


def message(address: str, args: list) -> bytes:
    builder = OscMessageBuilder(address=address)
    for arg in args:
        if isinstance(arg, float):
            builder.add_arg(arg, "d" if abs(arg) > 3.4e38 else "f")
        elif isinstance(arg, int) and not isinstance(arg, bool):
            builder.add_arg(arg, "i" if -(2**31) <= arg < 2**31 else "h")
        else:
            builder.add_arg(arg)
    return builder.build().dgram


DATAGRAMS = st.one_of(
    st.tuples(st.sampled_from(ADDRESSES), NUMBERS_IN_ADDRESSES, st.lists(ARGUMENTS, max_size=3)).map(
        lambda t: message(t[0].format(n=t[1]), t[2])
    ),
    st.binary(max_size=64),
    st.binary(max_size=48).map(lambda b: b"#bundle\x00" + b"\x00" * 8 + b),
)


@pytest.fixture(scope="module")
def playing(tiny_lm, tiny_sae_dir, tmp_path_factory):
    from sae.files import load_sae

    sae = load_sae(tiny_sae_dir)
    bus = ParameterBus(knob_count=4, feature_count=sae.cfg.d_sae)
    for i, f in enumerate(alive_features(sae, 4)):
        bus.configure_knob(i, features=[(f, 1.0)], lo=-5, hi=5)
    host = Host(tiny_lm, bus, NullSink(tiny_lm.sample_rate), sae, HostConfig(meters=alive_features(sae, 2)))
    folder = PresetFolder(tmp_path_factory.mktemp("osc-presets"))
    server = OscServer(
        bus,
        port=0,
        status=lambda: {"nonfinite_steps": host.status().nonfinite_steps},
        presets=preset_handler(bus, "tiny", str(tiny_sae_dir), sae.cfg.d_sae, folder),
    )
    host.start()
    server.start()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield host, server, sock, bus
    sock.close()
    server.stop()
    host.stop()
    bus.close()


def status_round_trip(server, sock) -> bool:
    """Send /mgsteer/status with a unique tag and wait for that answer (errors may come first)."""
    sock.sendto(message("/mgsteer/status", []), server.address)
    end = time.perf_counter() + 5.0
    while time.perf_counter() < end:
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            return False
        if data.startswith(b"/mgsteer/status\x00"):
            return True
    return False


# The host's thread draws from `random` (the decoder's layer-drop check) while examples are drawn.
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
@settings(FUZZ, max_examples=int(500 * SCALE))
@given(datagrams=st.lists(DATAGRAMS, min_size=1, max_size=4))
def test_fuzz_osc_while_playing(playing, datagrams):
    host, server, sock, bus = playing
    for data in datagrams:
        sock.sendto(data, server.address)
    bus.play()  # a fuzzed /transport/stop must not make the next check wait for nothing
    assert status_round_trip(server, sock), "the OSC server stopped answering"
    assert server.stats.failed == 0, "a handler failed unexpectedly"
    assert host.alive and host.error is None, f"the host stopped: {host.error!r}"


def test_fuzzed_host_was_playing_throughout(playing):
    """Runs after the fuzz (same module fixture): the music advanced and never stopped."""
    host, server, _, bus = playing
    bus.play()
    position = host.status().position_s
    assert wait_for(lambda: host.status().position_s > position + 0.2, timeout=20)
    assert host.alive and host.error is None
    assert server.stats.received > 0
