#!/usr/bin/env python3
"""Build a two-speaker voice-conversion corpus offline with Debian's festival voices.

    apt-get install festival festvox-kallpc16k festvox-us-slt-hts
    python scripts/festival_corpus.py corpus/ [--train 300] [--eval 40] [--seed 0]

Speaker A is `kal` (male diphone voice, 16 kHz), speaker B is `slt` (female HTS
voice, 32 kHz). The sentences come from the small grammar below (shipped with
the repository, so the corpus is the same on every machine):

    corpus/train/kal/kal-0000.wav ...   A's training set
    corpus/train/slt/slt-0000.wav ...   B's training set: different sentences from A's
    corpus/eval/kal/eval-0000.wav ...   a parallel set: both speakers say the same
    corpus/eval/slt/eval-0000.wav ...   sentences, none of which is in either training set
    corpus/sentences.tsv                which sentence is in which file

With --unseen (festvox-kdlpc16k installed), a third voice, `ked` (male diphone,
16 kHz), says the evaluation sentences too:

    corpus/unseen/ked/eval-0000.wav ... a voice no model is trained on (the vocoder's
                                        test of voices it has not heard)

An existing corpus with the same settings is left alone (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VOICES = {"kal": "voice_kal_diphone", "slt": "voice_cmu_us_slt_arctic_hts"}
UNSEEN = {"ked": "voice_ked_diphone"}

# A grammar of everyday sentences with a broad spread of English sounds.
WORDS = {
    "name": "Anna Bruno Carla David Edgar Fiona George Helen Ivan Julia Kevin Laura Martin Nora Oscar Paula "
            "Quentin Rachel Simon Tina Victor Wendy".split(),
    "adj": "old young quiet loud bright dark heavy light narrow broad smooth rough golden silver yellow green "
           "purple tiny huge careful sleepy hungry friendly curious ancient modern frozen sunny windy lazy clever "
           "gentle brave proud shy busy".split(),
    "noun": "dog cat horse farmer teacher doctor sailor baker pilot singer child driver painter neighbour "
            "student captain gardener fisherman lawyer merchant".split(),
    "thing": "box chair lamp bottle kettle basket ladder blanket letter candle mirror bicycle window jacket "
             "garden bridge river village mountain market station castle meadow harbour orchard kitchen".split(),
    "verb_past": "carried painted found lifted cleaned opened watched followed pushed dropped fixed visited "
                 "crossed measured borrowed noticed polished ordered mended wrapped".split(),
    "verb": "carry paint find lift clean open watch follow push drop fix visit cross measure borrow notice "
            "polish order mend wrap".split(),
    "time": "this morning|last night|on Sunday|before dinner|after the storm|in the spring|at noon|"
            "every evening|during the winter|by the afternoon|early on Friday|late in the summer".split("|"),
    "place": "near the station|behind the old barn|across the valley|beside the river|under the bridge|"
             "inside the museum|along the beach|at the top of the hill|in the crowded square|"
             "outside the bakery".split("|"),
    "number": "two three four five six seven eight nine ten twelve fifteen twenty".split(),
    "feeling": "surprised|delighted|worried|amazed|relieved|puzzled|annoyed|thrilled".split("|"),
}

TEMPLATES = [
    "The {adj} {noun} {verb_past} the {thing} {time}.",
    "{name} {verb_past} a {adj} {thing} {place}.",
    "A {adj} {noun} was {feeling} to see the {thing} {place}.",
    "Did the {noun} {verb} the {adj} {thing} {time}?",
    "We should {verb} the {thing} before the {noun} comes back.",
    "{name} and {name2} {verb_past} {number} {thing}s {time}.",
    "Please {verb} the {adj} {thing} and put it {place}.",
    "The {thing} {place} looked {adj} {time}.",
    "Nobody knew why the {noun} {verb_past} the {thing} {time}.",
    "When the {noun} arrived, {name} was {feeling} and {verb_past} the {thing}.",
    "{number} {adj} {noun}s waited {place} for the {thing}.",
    "I think the {adj} {thing} belongs to the {noun} {place}.",
]


def sentences(count: int, seed: int) -> list[str]:
    """`count` different sentences, the same for the same seed on every machine."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        template = rng.choice(TEMPLATES)
        fill = {key: rng.choice(values) for key, values in WORDS.items()}
        fill["name2"] = rng.choice([n for n in WORDS["name"] if n != fill["name"]])
        text = template.format(**fill)
        text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def synthesize(voice: str, jobs: list[tuple[str, Path]]) -> None:
    """Speak every (text, path) with one festival process (loading a voice is the slow part)."""
    lines = [f"({VOICES.get(voice) or UNSEEN[voice]})"]
    for text, path in jobs:
        quoted = text.replace("\\", " ").replace('"', " ")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{path}" \'riff)')
    with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as script:
        script.write("\n".join(lines) + "\n")
    try:
        subprocess.run(["festival", "-b", script.name], check=True, capture_output=True, text=True)
    finally:
        Path(script.name).unlink(missing_ok=True)
    missing = [str(p) for _, p in jobs if not p.is_file()]
    if missing:
        raise RuntimeError(f"festival ({voice}) wrote no file for {len(missing)} sentences, e.g. {missing[0]}")


def build_unseen(out: Path, n_train: int, n_eval: int, seed: int) -> None:
    """The evaluation sentences in the voices of UNSEEN (out/unseen/VOICE/eval-NNNN.wav)."""
    texts = sentences(2 * n_train + n_eval, seed)[2 * n_train :]
    for voice in UNSEEN:
        folder = out / "unseen" / voice
        jobs = [(text, folder / f"eval-{j:04d}.wav") for j, text in enumerate(texts)]
        if all(path.is_file() for _, path in jobs):
            continue
        folder.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda k: synthesize(voice, jobs[k::2]), range(2)))
        print(f"{folder}: {len(jobs)} evaluation sentences in the unseen voice {voice}")


def build(out: Path, n_train: int, n_eval: int, seed: int) -> Path:
    if shutil.which("festival") is None:
        raise SystemExit("festival is not installed: apt-get install festival festvox-kallpc16k festvox-us-slt-hts")
    settings = {"train": n_train, "eval": n_eval, "seed": seed, "voices": VOICES}
    stamp = out / "corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == settings:
        print(f"{out}: corpus already built with these settings")
        return out
    texts = sentences(2 * n_train + n_eval, seed)
    plan: dict[str, list[tuple[str, Path]]] = {voice: [] for voice in VOICES}
    rows = []
    for i, voice in enumerate(VOICES):  # A and B never say the same training sentence
        for j, text in enumerate(texts[i * n_train : (i + 1) * n_train]):
            plan[voice].append((text, out / "train" / voice / f"{voice}-{j:04d}.wav"))
    for j, text in enumerate(texts[2 * n_train :]):
        for voice in VOICES:
            plan[voice].append((text, out / "eval" / voice / f"eval-{j:04d}.wav"))
    for voice, jobs in plan.items():
        for text, path in jobs:
            path.parent.mkdir(parents=True, exist_ok=True)
            rows.append(f"{path.relative_to(out)}\t{text}")
    chunks = [(voice, jobs[k::2]) for voice, jobs in plan.items() for k in range(2)]  # 2 cores
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda c: synthesize(*c), chunks))
    (out / "sentences.tsv").write_text("\n".join(sorted(rows)) + "\n", encoding="utf-8")
    stamp.write_text(json.dumps(settings, indent=1) + "\n")
    print(f"{out}: {n_train} training sentences per speaker, {n_eval} parallel evaluation sentences")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=300, help="training sentences per speaker")
    parser.add_argument("--eval", type=int, default=40, help="parallel evaluation sentences")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unseen", action="store_true",
                        help=f"also the evaluation sentences in {', '.join(UNSEEN)} (apt-get install festvox-kdlpc16k)")
    args = parser.parse_args(argv)
    build(args.out, args.train, args.eval, args.seed)
    if args.unseen:
        build_unseen(args.out, args.train, args.eval, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
