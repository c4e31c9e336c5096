"""The benchmark's demo set: held-out material, exact truth, same seed same audio."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from stemloop.config import load_config
from stemloop.datasets.archival_mix import STEMS, MixSpec, build_mixture, write_mixture
from stemloop.datasets.evalsources import ALLISON, CSOUND_SF2

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import demo_set  # noqa: E402

pytestmark = pytest.mark.skipif(not (ALLISON.is_dir() and Path(CSOUND_SF2).is_file()),
                                reason="held-out Debian packages missing: run make sysdeps")
SPEC = MixSpec("tiny", 7, ("allison", "czech"), "joplin", "maple_leaf_rag.mxl", "sf_GMbank",
               8.0, 16000)


def test_stems_sum_exactly_to_the_written_mixture(tmp_path: Path) -> None:
    stems, meta = build_mixture(SPEC)
    write_mixture(stems, meta, tmp_path / "mixture.flac", tmp_path / "truth")
    assert demo_set.verify(tmp_path) == 0.0
    mixture, rate = sf.read(tmp_path / "mixture.flac")
    assert rate == 16000 and len(mixture) == 8 * 16000
    for name in STEMS:  # every stem is present and audible
        assert np.sqrt(np.mean(stems[name] ** 2)) > 1e-4
    assert {line["voice"] for line in meta["lines"]} <= {"allison", "czech"}


def test_same_seed_same_audio_other_seed_other_audio() -> None:
    first, _ = build_mixture(SPEC)
    again, _ = build_mixture(SPEC)
    other, _ = build_mixture(MixSpec(**{**SPEC.__dict__, "seed": 8}))
    assert all(np.array_equal(first[k], again[k]) for k in STEMS)
    assert not np.array_equal(first["noise"], other["noise"])


def test_demo_set_composers_are_held_out_of_the_library() -> None:
    library = set(load_config().mixbus.library.composers)
    assert not {spec.composer for spec in demo_set.SPECS} & library
    assert len(demo_set.SPECS) >= 6
    assert all(20 <= spec.seconds <= 60 for spec in demo_set.SPECS)
    with pytest.raises(SystemExit, match="composer bach"):
        demo_set.check_held_out((MixSpec("x", 1, ("allison",), "bach", "bwv66.6.mxl",
                                         "pluck"),))


DEV = [s for s in demo_set.DEV_SPECS if s.name == "drama-cs-nl-48k"][0]


@pytest.mark.skipif(not demo_set.RECORDED_MUSIC["warzone2100"][0].is_dir(),
                    reason="the development set's Debian packages are missing: make sysdeps")
def test_a_development_mixture_has_real_recorded_music_and_exact_truth(tmp_path: Path) -> None:
    """Real recorded music (an excerpt of a soundtrack), Czech and Dutch acting, 48 kHz."""
    spec = MixSpec(**{**DEV.__dict__, "seconds": 8.0})
    stems, meta = build_mixture(spec)
    write_mixture(stems, meta, tmp_path / "mixture.flac", tmp_path / "truth")
    assert demo_set.verify(tmp_path) == 0.0
    assert sf.info(str(tmp_path / "mixture.flac")).samplerate == 48000
    assert meta["music"]["package"] == "warzone2100-music" and meta["music"]["start_s"] >= 5
    assert {line["package"] for line in meta["lines"]} <= {"fillets-ng-data-cs",
                                                           "fillets-ng-data-nl"}
    assert all(np.sqrt(np.mean(stems[name] ** 2)) > 1e-4 for name in STEMS)


@pytest.mark.skipif(not (demo_set.RECORDED_MUSIC["warzone2100"][0].is_dir()
                         and Path("/usr/share/tuxpaint/stamps").is_dir()),
                    reason="the full-band set's Debian packages are missing: make sysdeps")
def test_a_full_band_mixture_keeps_the_voice_above_11_khz(tmp_path: Path) -> None:
    """The modern chain leaves the band alone: held-out read voices with real energy above
    11 kHz (the archival chain's band limit would leave none), exact truth."""
    import torch

    from stemloop.datasets.audio import energy_above_db, file_energy_above_db
    from stemloop.tasks.state import band_above_db

    full = demo_set.FULLBAND_SPECS[2]  # two voices: Bulgarian and Danish
    stems, meta = build_mixture(MixSpec(**{**full.__dict__, "seconds": 10.0}))
    write_mixture(stems, meta, tmp_path / "mixture.flac", tmp_path / "truth")
    assert demo_set.verify(tmp_path) == 0.0
    assert {line["package"] for line in meta["lines"]} == {"tuxpaint-stamps-default"}
    assert energy_above_db(torch.from_numpy(stems["dialogue"])[None], 48000, 11025) > -45
    mixture = torch.from_numpy(sf.read(tmp_path / "mixture.flac", dtype="float32",
                                       always_2d=True)[0].T.copy())
    whole = energy_above_db(mixture, 48000, 11025)  # read in blocks: the same figure
    block_s = (mixture.shape[-1] - 1000) / 48000 / 2  # the last block 1000 samples long
    assert abs(file_energy_above_db(tmp_path / "mixture.flac", 11025, block_s) - whole) < 0.05
    assert band_above_db(tmp_path / "mixture.flac", 48000) == pytest.approx(whole, abs=0.05)
    archival, _ = build_mixture(MixSpec(**{**full.__dict__, "seconds": 10.0,
                                           "chain": "archival"}))
    assert energy_above_db(torch.from_numpy(archival["dialogue"])[None], 48000, 11025) < -50


def test_the_development_split_is_fixed_and_balanced() -> None:
    """Twelve mixtures of 20-60 s, two disjoint halves of six, each with every rate, every
    language and both music sources; none uses Allison's prompts (reserved elsewhere)."""
    specs = {s.name: s for s in demo_set.DEV_SPECS}
    tune, report = (set(demo_set.DEV_SPLIT[k]) for k in ("tune", "report"))
    assert len(specs) == 12 and tune | report == set(specs) and not tune & report
    assert len(tune) == len(report) == 6
    for half in (tune, report):
        assert {specs[n].rate for n in half} == {16000, 22050, 44100, 48000}
        assert {specs[n].composer for n in half} == {"warzone2100", "frozen-bubble"}
        langs = {v.split("-")[1] if v.startswith("fillets") else v
                 for n in half for v in specs[n].voices}
        assert {"cs", "nl", "armelle", "librivox"} <= langs
    assert all(20 <= s.seconds <= 60 and "allison" not in s.voices for s in specs.values())


def test_evaluation_material_never_enters_the_library() -> None:
    from stemloop.datasets.evalsources import check_not_evaluation, is_held_out
    from stemloop.datasets.speech import recorded_clips

    assert not any(is_held_out(f) for clip in recorded_clips() for f in clip.sources)
    full = recorded_clips(full_band=True)
    assert not any(is_held_out(f) for clip in full for f in clip.sources)
    from stemloop.datasets.evalsources import TUXPAINT

    if TUXPAINT.is_dir():  # `make sysdeps` installs it
        assert {c.voice for c in full if c.tool == "tuxpaint"} == {
            "tuxpaint-ru", "tuxpaint-be", "tuxpaint-es", "tuxpaint-ro"}
    for path in ("/usr/share/tuxpaint/stamps/animals/cat_desc_bg.ogg",
                 "/usr/share/tuxpaint/stamps/food/apple_desc_da.ogg",
                 "/usr/share/games/fillets-ng/sound/city/cs/vit-m-a.ogg",
                 "/usr/share/games/warzone2100/music/albums/x/track1.opus"):
        with pytest.raises(ValueError, match="evaluation material"):
            check_not_evaluation([path], "the library")
    check_not_evaluation(["/usr/share/games/fillets-ng/sound/city/en/vit-m-a.ogg"], "ok")
