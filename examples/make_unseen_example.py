"""Build the bundled "unseen" demo recording and its true stems (run once; outputs committed).

25 s of mono archival-style dialogue at 22.05 kHz made only from material held
out of the general model's library: Allison Smith's recorded English prompts
(asterisk-core-sounds-en-wav, CC-BY-SA 3.0) answered by festival's Italian voice
lp_diphone, over Schubert's "Der Lindenbaum" played on csound's sf_GMbank
soundfont, through a seeded archival chain (band-limit, resonance, room, tape
dropouts, hiss, mains hum, crackle, clicks) — the same code as the benchmark's
demo set (``bench/demo_set.py``). The stems sum exactly to the recording.

    python examples/make_unseen_example.py   # needs the Makefile's DEBS (sysdeps)

Writes examples/unseen-dialogue.flac, examples/unseen-truth/{dialogue,music,noise}.flac
and examples/unseen-truth/meta.json.

Material and licences (per the Debian copyright files): voice prompts by Allison
Smith, Asterisk core sounds, CC-BY-SA 3.0; festival Italian voice lp_diphone
(festvox-italp16k), GPL-2+; csound's sf_GMbank.sf2 (csound-soundfont), LGPL-2.1+;
the score from music21's corpus (public domain).
"""

from __future__ import annotations

from pathlib import Path

from stemloop.datasets.archival_mix import MixSpec, build_mixture, write_mixture

HERE = Path(__file__).resolve().parent
SPEC = MixSpec("unseen-dialogue", 1957, ("allison", "italian"), "schubert", "Lindenbaum.xml",
               "sf_GMbank", 25.0, 22050)


def main() -> None:
    stems, meta = build_mixture(SPEC)
    truth = HERE / "unseen-truth"
    write_mixture(stems, meta, HERE / "unseen-dialogue.flac", truth, truth / "meta.json")
    print(f"wrote {HERE / 'unseen-dialogue.flac'} ({SPEC.seconds:g} s, {SPEC.rate} Hz), "
          f"{len(meta['lines'])} lines, and its stems in {truth}")


if __name__ == "__main__":
    main()
