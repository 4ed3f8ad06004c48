"""mgsteer label on the tiny model: window audio, resumable and sharded labeling, the catalog;
and the whole road label → catalog → browse (in headless Chromium) → eval-steer."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from llm_server import GOOD, FakeLLM

from cli.main import main
from engine.errors import MgsteerError
from sae.bootstrap import init_from_activations
from sae.catalog import CATALOG_FILE, load_catalog, read_records
from sae.examples import ExampleConfig, Window
from sae.files import save_sae
from sae.harvest import Clip, audio_clips, harvest_to_store, load_audio
from sae.label import LabelConfig, label_features
from sae.labelers import LabelerError
from sae.labelers.descriptors import DescriptorLabeler
from sae.store import ActivationStore
from sae.topk import SAEConfig
from sae.train import feature_stats
from sae.window_audio import WindowAudio

LAYER = 2
PROMPTS = ["simple melody", "techno groove", "sad cello", "piano ballad", "funky bass", "rock drums"]


@pytest.fixture(scope="module")
def tiny_store(tiny_lm, tmp_path_factory):
    folder = tmp_path_factory.mktemp("acts")
    clips = [Clip(f"prompt{i}", seconds=2.0, text=p) for i, p in enumerate(PROMPTS)]
    harvest_to_store(tiny_lm, clips, [LAYER], folder, "generation")
    return ActivationStore(folder)


@pytest.fixture()
def fresh_sae(tiny_store, tmp_path):
    acts = tiny_store.load_layer(LAYER)
    cfg = SAEConfig(d_in=acts.shape[1], d_sae=64, k=8, hook_layer=LAYER, model_name="tiny")
    sae = init_from_activations(acts, cfg, seed=0)
    return save_sae(sae, tmp_path / "sae", feature_stats(sae, tiny_store, LAYER))


class Counting(DescriptorLabeler):
    """Descriptors, counting features; can be told to stop the run or fail on some features."""

    def __init__(self, interrupt_after: int | None = None, fail: int | None = None) -> None:
        super().__init__()
        self.calls, self.interrupt_after, self.fail = 0, interrupt_after, fail

    def label(self, windows):
        if self.interrupt_after is not None and self.calls == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls += 1
        if self.fail == self.calls:
            raise LabelerError("server busy")
        return super().label(windows)


CFG = LabelConfig(limit=5, examples=ExampleConfig(top_n=4, window_s=1.0, negatives=6))


def test_interrupted_labeling_resumes_without_redoing_features(tiny_lm, tiny_store, fresh_sae):
    with pytest.raises(KeyboardInterrupt):
        label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[Counting(interrupt_after=2)])
    assert len(read_records(fresh_sae)) == 2
    again = Counting()
    summary = label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[again])
    assert again.calls == 3 and summary == {"assigned": 5, "skipped": 2, "labeled": 3, "errors": 0}
    catalog = load_catalog(fresh_sae)
    assert len(catalog["features"]) == 5 and catalog["format"] == "mgsteer-features/1"
    third = Counting()
    assert label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[third])["skipped"] == 5
    assert third.calls == 0
    (fresh_sae / CATALOG_FILE).unlink()  # killed between the last feature and the merge
    label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[third])
    assert third.calls == 0 and len(load_catalog(fresh_sae)["features"]) == 5
    # every example is a playable snippet of window_s seconds; the random windows too
    record = catalog["features"][0]
    assert record["examples"] and record["histogram"]["counts"]
    for example in record["examples"] + catalog["random_windows"]:
        audio, sr = sf.read(str(fresh_sae / example["audio"]))
        assert sr == tiny_lm.sample_rate and abs(len(audio) - sr) <= 1
        assert example["end_s"] - example["start_s"] == pytest.approx(1.0)


def test_failed_features_are_recorded_and_retried(tiny_lm, tiny_store, fresh_sae):
    summary = label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[Counting(fail=2)])
    assert summary["errors"] == 1
    failed = [r for r in read_records(fresh_sae).values() if r["errors"]]
    assert len(failed) == 1 and failed[0]["errors"]["descriptors"] == {"message": "server busy", "retry": True}
    again = Counting()
    assert label_features(fresh_sae, tiny_store.folder, tiny_lm, CFG, labelers=[again])["labeled"] == 1
    assert not read_records(fresh_sae)[failed[0]["id"]]["errors"]


def test_shards_split_the_features_and_merge_into_one_catalog(tiny_lm, tiny_store, fresh_sae):
    counts = []
    for worker in range(2):
        labeler = Counting()
        cfg = LabelConfig(limit=5, examples=CFG.examples, shard=(worker, 2))
        label_features(fresh_sae, tiny_store.folder, tiny_lm, cfg, labelers=[labeler])
        counts.append(labeler.calls)
    assert counts == [3, 2]
    assert sorted(p.name for p in fresh_sae.glob("features.part-*")) == [
        "features.part-0-of-2.jsonl",
        "features.part-1-of-2.jsonl",
    ]
    assert len(load_catalog(fresh_sae)["features"]) == 5


def test_window_audio_is_cut_from_the_source_or_decoded_from_tokens(tiny_lm, tmp_path):
    sr = tiny_lm.sample_rate
    t = np.arange(3 * sr) / sr
    (tmp_path / "audio").mkdir()
    sf.write(str(tmp_path / "audio" / "a.wav"), (0.3 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), sr)
    clips = audio_clips(tmp_path / "audio", clip_seconds=2.0)
    harvest_to_store(tiny_lm, clips, [LAYER], tmp_path / "acts", "audio")
    store = ActivationStore(tmp_path / "acts")
    assert [c for c in store.clips] == ["a.wav#0", "a.wav#1"]
    window = Window(clip=1, start=10, stop=35, peak=20, activation=1.0)  # clip 1 starts at 2.0 s
    audio = WindowAudio(store, tiny_lm)
    cut = audio(window)
    expected = load_audio(Clip("x", tmp_path / "audio" / "a.wav", 2.0 + 10 / 50, 25 / 50), sr)
    np.testing.assert_array_equal(cut, expected)
    (tmp_path / "audio" / "a.wav").unlink()  # the dataset moved: decode the stored tokens instead
    decoded = WindowAudio(ActivationStore(tmp_path / "acts"), tiny_lm)(window)
    assert len(decoded) == 25 * sr // 50 and np.abs(decoded).max() > 0


def test_label_catalog_browse_eval_steer_end_to_end(tiny_lm, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    acts, sae = tmp_path / "acts", tmp_path / "sae"
    assert main(["harvest", "--model", "tiny", "--prompts", str(prompts), "--seconds", "3", "--layers", str(LAYER),
                 "--out", str(acts), "--device", "cpu"]) == 0  # fmt: skip
    assert main(["train", "--acts", str(acts), "--out", str(sae), "--k", "8", "--expansion", "2", "--steps", "100",
                 "--batch-size", "256", "--device", "cpu"]) == 0  # fmt: skip
    # one count of what fires, the same in train's lines, filter.json and info
    trained, report = capsys.readouterr().out, json.loads((sae / "filter.json").read_text())
    fire = report["total"] - report["dead"]
    assert f"{fire}/{report['total']} fire on the store, {report['dead']} never do" in trained
    assert f"keeps {len(report['kept'])}/{report['total']} features ({report['generic']} fire on more than" in trained
    assert main(["info", "--model", "tiny", "--sae", str(sae), "--device", "cpu"]) == 0
    assert f"stats      {fire}/{report['total']} features fire" in capsys.readouterr().out
    with FakeLLM([("content", GOOD), ("content", "not json at all"), ("content", "still not json"),
                  ("content", GOOD)]) as llm:  # fmt: skip
        code = main(["label", "--sae", str(sae), "--acts", str(acts), "--labelers", "descriptors,clap,classifier,llm",
                     "--clap-model", "tiny", "--classifier-model", "tiny", "--llm-url", llm.url, "--llm-model", "m",
                     "--features", "all", "--limit", "4", "--top-n", "6", "--window-s", "1",
                     "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert "labeled 4 features with descriptors, clap, classifier, llm (0 already done, 1 labeler errors)" in (
        capsys.readouterr().out
    )
    catalog = json.loads((sae / CATALOG_FILE).read_text())
    features = catalog["features"]
    assert len(features) == 4
    assert sum("llm" in f["errors"] for f in features) == 1  # the feature whose two replies were not JSON
    assert sum(f["labels"].get("llm", [{}])[0].get("label") == "bright piano" for f in features) == 3
    for f in features:
        assert set(f["labelers"]) == {"descriptors", "clap", "classifier", "llm"}
        for name, v in f["validation"].items():
            if v["auroc"] is not None:
                assert 0 <= v["auroc"] <= 1 and v["n_top"] == 3
            if name == "clap" and v["scorer"]:
                assert v["independent"] is (v["scorer"] != "clap")
    assert set(catalog["clap_baseline"]) >= {"classifier", "llm"}

    assert main(["info", "--model", "tiny", "--sae", str(sae), "--device", "cpu"]) == 0
    assert "labels     4 features labeled (descriptors, clap, classifier, llm)" in capsys.readouterr().out

    page = tmp_path / "site" / "features.html"
    assert main(["browse", "--sae", str(sae), "--out", str(page)]) == 0
    files = page.parent / "features_files"
    assert len(list(files.glob("*.ogg"))) == len(list(files.glob("*.png"))) > 4
    check_in_chromium(page, expected_cards=4)
    word = features[0]["labels"]["classifier"][0]["label"].split()[0].lower()
    expected = sum(any(word in lab["label"].lower() for labs in f["labels"].values() for lab in labs) for f in features)
    assert expected >= 1 and check_in_chromium(page, expected_cards=4, query=word) == expected
    assert check_in_chromium(page, expected_cards=4, query="no-such-label-anywhere") == 0

    with_llm = [f for f in features if f["labels"].get("llm")][:2]
    ids = ",".join(str(f["id"]) for f in with_llm)
    out = tmp_path / "eval"
    assert main(["eval-steer", "--model", "tiny", "--sae", str(sae), "--features", ids, "--scorer", "clap",
                 "--clap-model", "tiny", "--seconds", "0.4", "--seeds", "2", "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    report = json.loads((out / "eval_steer.json").read_text())
    assert report["evaluated"] == 2 and 0 <= report["steerable_share"] <= 1
    for f in report["features"]:
        assert f["concept"] == "bright piano"  # the LLM's label is preferred
        assert set(f["vs"]) == {"none", "random", "prompt"} and f["vs"]["none"]["pairs"] == 8
    assert "Steering evaluation" in (out / "eval_steer.html").read_text()


def check_in_chromium(page, expected_cards: int, query: str = "") -> int:
    """Open the page headless (with a search in the address): it renders every card and logs
    nothing to the console; returns how many cards the search shows."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("chromium is not installed (`make system` adds it as root)")
    run = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
         "--dump-dom", page.resolve().as_uri() + (f"#q={query}" if query else "")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f'data-rendered="{expected_cards}"' in run.stdout
    console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
    assert console == [], console
    assert len(re.findall(r'class="card"', run.stdout)) == expected_cards
    return int(re.search(r'data-shown="(\d+)"', run.stdout).group(1))


def test_thumbnails_are_valid_pngs():
    import struct
    import zlib

    from sae.browse import THUMB_H, THUMB_W, png_bytes, spectrogram_thumbnail

    sr = 32000
    t = np.arange(sr) / sr
    img = spectrogram_thumbnail(np.sin(2 * np.pi * 1000 * t), sr)
    assert img.shape == (THUMB_H, THUMB_W) and img.dtype == np.uint8
    row = int(img.mean(1).argmax())  # a 1 kHz tone is one bright band, in the upper half of a log axis
    assert img[row].min() > 200 and row < THUMB_H // 2 and img.mean() < 128
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        chunks[kind] = body
        pos += 12 + length
    assert struct.unpack(">II", chunks[b"IHDR"][:8]) == (THUMB_W, THUMB_H)
    raw = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(THUMB_H, THUMB_W + 1)
    assert (raw[:, 0] == 0).all() and np.array_equal(raw[:, 1:], img)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["label", "--labelers", "descriptors,gpt"], "unknown labeler(s) gpt"),
        (["label", "--features", "1,x"], "bad feature list '1,x'"),
        (["label", "--features", "9999"], "unknown feature id 9999"),
        (["label", "--window-s", "0"], "argument --window-s: value must be positive"),
        (["label", "--labelers", "llm"], "the llm labeler needs an endpoint"),
        (["label", "--acts", "{sae}"], "is not an activation store"),
        (["browse", "--out", "page.txt"], "this writes .html or .htm files"),
        (["browse"], "has no features.json"),
        (["eval-steer", "--model", "tiny", "--features", "0"], "feature 0 has no label"),
        (["eval-steer", "--model", "tiny", "--features", "0", "--concept", "0"], "bad --concept '0'"),
        (["eval-steer", "--model", "tiny", "--features", "0", "--concept", "0=x", "--alpha", "nan"], "--alpha"),
        (["eval-steer", "--model", "tiny", "--features", "0", "--concept", "0=x", "--seeds", "0"], "between 1 and"),
    ],
)
def test_bad_label_browse_and_eval_inputs_are_one_line_errors(args, needle, tiny_store, fresh_sae, capsys, monkeypatch):
    monkeypatch.delenv("MGSTEER_LLM_URL", raising=False)
    argv = [a.replace("{sae}", str(fresh_sae)) for a in args] + ["--sae", str(fresh_sae)]
    if args[0] == "label" and "--acts" not in args:
        argv += ["--acts", str(tiny_store.folder)]
    if args[0] != "browse":
        argv += ["--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgsteer: error: ") and needle in err[0], err


def test_a_store_without_tokens_or_sources_says_what_to_do(tiny_lm, tmp_path):
    from sae.store import StoreMeta, StoreWriter

    writer = StoreWriter(tmp_path / "old", StoreMeta("tiny", (LAYER,), tiny_lm.hidden_size, "float32", "generation"))
    writer.add_clip("prompt0", {LAYER: torch.zeros(40, tiny_lm.hidden_size)})
    writer.flush()
    audio = WindowAudio(ActivationStore(tmp_path / "old"), tiny_lm)
    with pytest.raises(MgsteerError, match="re-harvest it"):
        audio(Window(0, 0, 20, 10, 1.0))
