"""Clips put together from labelled recordings, each with five captions that say what is heard.

A clip is one *recipe* applied to real recordings (:mod:`.catalogue`):

=============  =================================================================================
``repeat``     one sound, once or 2-6 times, fast (short gaps) or slow (long pauses)
``background`` a sound (1-4 times) over a continuous background: a looped recording or soft music
``sequence``   one sound (1-3 times), then another (1-3 times)
``instrument`` a sampled instrument playing a pattern: a rising or falling scale, one held or
               repeated note, chords, arpeggios or a melody, low or high, slow or fast
``percussion`` a drum-kit rhythm, hand claps, a cowbell or a tambourine
``speech``     someone counting in one of 18 languages, or speaking sentences in one of them
=============  =================================================================================

The captions are written from the recordings' labels and from the recipe's own parameters (count,
pace, background, order, pattern, register, language), with varied wording, so each caption is
true of its clip. Everything is drawn from one seeded generator: the same seed gives the same clips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import soxr

from atr_core.corpus.catalogue import (
    BACKGROUNDS,
    INSTRUMENTS,
    LANGUAGES,
    NUMBER_WORDS,
    Instrument,
    Sound,
)
from atr_core.corpus.render import Note

SR = 44100  # working sample rate of the composition
MIN_SECONDS = 2.0
MAX_SECONDS = 27.0
RECIPES = {"repeat": 0.30, "background": 0.16, "sequence": 0.14, "instrument": 0.22,
           "percussion": 0.05, "speech": 0.13}
COUNT_WORDS = {1: "once", 2: "twice", 3: "three times", 4: "four times", 5: "five times", 6: "six times"}


@dataclass
class Clip:
    """A composed clip: mono float32 waveform at :data:`SR`, five captions and how it was made."""

    waveform: np.ndarray
    captions: tuple[str, ...]
    recipe: str
    family: str  # stratification key: recipe and category
    keywords: tuple[str, ...]
    sources: tuple[str, ...] = field(default_factory=tuple)  # recordings used (keys)


class Library:
    """Decoded recordings by key, loaded on first use: ``loader(key) -> (waveform, rate)``."""

    def __init__(self, loader: Callable[[str], tuple[np.ndarray, int]], soundfont: bytes | None):
        self._loader = loader
        self._cache: dict[str, np.ndarray] = {}
        self.soundfont = soundfont

    def get(self, key: str) -> np.ndarray:
        """The recording ``key`` as mono float32 at :data:`SR`, peak-normalised, silence trimmed."""
        if key not in self._cache:
            x, sr = self._loader(key)
            x = np.asarray(x, dtype=np.float32)
            if x.ndim == 2:
                x = x.mean(axis=1)
            if sr != SR:
                x = soxr.resample(x, sr, SR).astype(np.float32)
            self._cache[key] = _normalise(_trim(x))
        return self._cache[key]

    def render(self, program: int, notes: Sequence[Note]) -> np.ndarray:
        """Notes on a SoundFont instrument, at :data:`SR`, peak-normalised."""
        from atr_core.corpus.render import render

        if self.soundfont is None:
            raise ValueError("no SoundFont loaded")
        x, sr = render(self.soundfont, program, notes)
        if sr != SR:
            x = soxr.resample(x, sr, SR).astype(np.float32)
        return _normalise(_trim(x))


def _trim(x: np.ndarray, floor_db: float = -45.0) -> np.ndarray:
    """Drop leading and trailing samples quieter than ``floor_db`` below the peak."""
    peak = float(np.abs(x).max()) if x.size else 0.0
    if peak == 0.0:
        return x
    loud = np.flatnonzero(np.abs(x) > peak * 10 ** (floor_db / 20))
    return x[loud[0] : loud[-1] + 1]


def _normalise(x: np.ndarray, peak: float = 0.7) -> np.ndarray:
    m = float(np.abs(x).max()) if x.size else 0.0
    return (x * (peak / m)).astype(np.float32) if m > 0 else x


def _place(events: Sequence[np.ndarray], gaps: Sequence[float], lead: float) -> np.ndarray:
    """Concatenate ``events`` with ``gaps`` (s) between them after ``lead`` s of silence."""
    parts = [np.zeros(int(lead * SR), np.float32)]
    for i, e in enumerate(events):
        parts.append(e)
        if i < len(gaps):
            parts.append(np.zeros(int(gaps[i] * SR), np.float32))
    return np.concatenate(parts)


def _fit_length(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pad to at least :data:`MIN_SECONDS` (silence after, some before) and cut at :data:`MAX_SECONDS`."""
    need = int(MIN_SECONDS * SR) - len(x)
    if need > 0:
        before = int(rng.uniform(0, need))
        x = np.concatenate([np.zeros(before, np.float32), x, np.zeros(need - before, np.float32)])
    return x[: int(MAX_SECONDS * SR)]


def _loop(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` repeated (with 20 ms cross-fades) to exactly ``n`` samples."""
    fade = min(int(0.02 * SR), len(x) // 4)
    if fade > 0:
        ramp = np.linspace(0, 1, fade, dtype=np.float32)
        x = x.copy()
        x[:fade] *= ramp
        x[-fade:] *= ramp[::-1]
    reps = int(np.ceil(n / max(len(x), 1)))
    return np.tile(x, reps)[:n]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def _captions(
    rng: np.random.Generator, templates: Sequence[str], **slots: str | Sequence[str]
) -> tuple[str, ...]:
    """Five distinct captions from ``templates`` (at least five), in a seeded order.

    A slot given as a sequence (synonyms: ``S=("a dog", "a puppy")``) is drawn anew for each caption.
    """
    out: list[str] = []
    for i in rng.permutation(len(templates)):
        values = {k: v if isinstance(v, str) else _pick(rng, v) for k, v in slots.items()}
        caption = _cap(templates[int(i)].format(**values).strip())
        if caption not in out:
            out.append(caption)
        if len(out) == 5:
            return tuple(out)
    raise ValueError(f"templates gave {len(out)} distinct captions, 5 are needed: {templates}")


def _be(sound: Sound) -> str:
    return "are" if sound.plural else "is"


# ------------------------------------------------------------------------------------------- recipes


def repeat_clip(lib: Library, rng: np.random.Generator, sound: Sound) -> Clip:
    """One sound once, or 2-6 times at a fast or slow pace."""
    count = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6]))
    fast = bool(rng.random() < 0.5)
    x = lib.get(sound.key)
    events = [x * float(rng.uniform(0.6, 1.0)) for _ in range(count)]
    gaps = [float(rng.uniform(0.05, 0.3) if fast else rng.uniform(0.9, 2.2)) for _ in range(count - 1)]
    wave = _fit_length(_place(events, gaps, float(rng.uniform(0.0, 0.5))), rng)
    pace = "once" if count == 1 else "fast" if fast else "slow"
    captions = _captions(rng, _REPEAT[pace], S=sound.subjects, V=sound.verb, G=sound.gerund,
                         C=COUNT_WORDS[count], be=_be(sound))
    return Clip(wave, captions, "repeat", f"repeat:{sound.category}",
                (sound.subject.split()[-1], sound.gerund, pace), (sound.key,))


_REPEAT = {
    "once": ("{S} {V} once", "{S} {V} a single time", "a short sound of {S} {G}",
             "{S} {V} briefly, then it is quiet", "just once, {S} {V}", "{S} {be} {G} one time only"),
    "fast": ("{S} {V} {C} in quick succession", "{S} {V} rapidly {C}", "{S} {be} {G} quickly and repeatedly",
             "the sound of {S} {G} several times in a row", "{S} {V} {C} very fast",
             "{S} {V} over and over without pausing"),
    "slow": ("{S} {V} {C} with long pauses in between", "{S} {V} slowly {C}", "{S} {be} {G} now and then",
             "the sound of {S} {G}, pausing between each one", "{S} {V} {C}, leaving gaps of silence",
             "every few seconds {S} {V} again"),
}


def _music_background(lib: Library, rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, str, str]:
    """Soft sustained chords on a piano, organ or strings: (waveform, phrase, key)."""
    program, phrase = [(0, "soft piano music"), (19, "quiet organ chords"), (48, "gentle string music"),
                       (88, "a soft synthesizer pad")][int(rng.integers(4))]
    root = int(rng.integers(48, 60))
    notes = []
    t = 0.0
    while t < seconds:
        chord = [root, root + 4, root + 7] if rng.random() < 0.5 else [root, root + 3, root + 7]
        for p in chord:
            notes.append(Note(t, 1.9, p, 60))
        t += 2.0
        root += int(rng.choice([-5, -3, 2, 5, 7]))
        root = min(max(root, 43), 64)
    return lib.render(program, notes), phrase, f"soundfont:{program}"


def background_clip(lib: Library, rng: np.random.Generator, sound: Sound) -> Clip:
    """A sound 1-4 times over a continuous background recording or soft music."""
    keys = [k for k in BACKGROUNDS if k != sound.key]
    count = int(rng.integers(1, 5))
    x = lib.get(sound.key)
    events = [x * float(rng.uniform(0.7, 1.0)) for _ in range(count)]
    gaps = [float(rng.uniform(0.4, 1.5)) for _ in range(count - 1)]
    fg = _place(events, gaps, float(rng.uniform(0.5, 1.5)))
    n = max(len(fg) + int(rng.uniform(0.5, 1.5) * SR), int(4.0 * SR))
    if rng.random() < 0.25:
        bg_wave, bg, bg_key = _music_background(lib, rng, n / SR + 2.0)
    else:
        bg_key = keys[int(rng.integers(len(keys)))]
        bg_wave, bg = lib.get(bg_key), BACKGROUNDS[bg_key]
    level = 10 ** (float(rng.uniform(-16, -9)) / 20)
    wave = _loop(bg_wave, n) * level
    wave[: len(fg)] += fg
    wave = _fit_length(_normalise(wave, 0.8), rng)
    templates = ("{S} {V} over the sound of {bg}", "{S} {V} with {bg} in the background",
                 "{bg} in the background while {S} {V}", "the sound of {bg}, with {S} {G} on top",
                 "{S} {V} {C} with {bg} behind it", "against a background of {bg}, {S} {V}")
    captions = _captions(rng, templates, S=sound.subjects, V=sound.verb, G=sound.gerund,
                         C=COUNT_WORDS[count], bg=bg)
    return Clip(wave, captions, "background", f"background:{sound.category}",
                (sound.subject.split()[-1], sound.gerund, bg), (sound.key, bg_key))


def sequence_clip(lib: Library, rng: np.random.Generator, first: Sound, second: Sound) -> Clip:
    """``first`` 1-3 times, then ``second`` 1-3 times."""
    n1, n2 = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    a, b = lib.get(first.key), lib.get(second.key)
    events = [a] * n1 + [b] * n2
    gaps = [float(rng.uniform(0.15, 0.6)) for _ in range(n1 - 1)] + [float(rng.uniform(0.6, 1.2))] + [
        float(rng.uniform(0.15, 0.6)) for _ in range(n2 - 1)
    ]
    wave = _fit_length(_place(events, gaps, float(rng.uniform(0.1, 0.6))), rng)
    templates = ("{A} {VA} and then {B} {VB}", "first {A} {VA}, followed by {B} {GB}",
                 "{A} {GA} followed by {B} {GB}", "{B} {VB} after {A} {VA}",
                 "the sound of {A} and then of {B}", "{A} {VA} {CA}, then {B} {VB} {CB}")
    captions = _captions(rng, templates, A=first.subjects, B=second.subjects, VA=first.verb, VB=second.verb,
                         GA=first.gerund, GB=second.gerund, CA=COUNT_WORDS[n1], CB=COUNT_WORDS[n2])
    return Clip(wave, captions, "sequence", f"sequence:{first.category}",
                (first.subject.split()[-1], second.subject.split()[-1]), (first.key, second.key))


PATTERNS = ("rising", "falling", "single", "repeated", "chords", "arpeggio", "melody")
_MAJOR = (0, 2, 4, 5, 7, 9, 11, 12)
_PENTA = (0, 2, 4, 7, 9, 12, 14, 16)


def _pattern_notes(pattern: str, base: int, beat: float, rng: np.random.Generator) -> list[Note]:
    """Notes of ``pattern`` from MIDI note ``base`` with ``beat`` s per note."""
    notes: list[Note] = []
    if pattern in ("rising", "falling"):
        steps = _MAJOR if pattern == "rising" else _MAJOR[::-1]
        for i, s in enumerate(steps):
            notes.append(Note(i * beat, beat * 0.95, base + s))
    elif pattern == "single":
        notes.append(Note(0.0, float(rng.uniform(2.5, 5.0)), base + 7))
    elif pattern == "repeated":
        for i in range(int(rng.integers(4, 9))):
            notes.append(Note(i * beat, beat * 0.8, base + 4))
    elif pattern == "chords":
        root = base
        for i in range(4):
            for s in (0, 4, 7):
                notes.append(Note(i * beat * 2, beat * 1.9, root + s, 80))
            root += int(rng.choice([5, 7, -5, 2]))
    elif pattern == "arpeggio":
        up = [0, 4, 7, 12, 16, 12, 7, 4]
        for i in range(16):
            notes.append(Note(i * beat / 2, beat / 2 * 0.9, base + up[i % len(up)]))
    else:  # melody: a seeded walk on the pentatonic scale
        pos = 2
        for i in range(int(rng.integers(8, 13))):
            pos = int(np.clip(pos + rng.choice([-2, -1, 1, 2]), 0, len(_PENTA) - 1))
            notes.append(Note(i * beat, beat * 0.9, base + _PENTA[pos]))
    return notes


def instrument_clip(lib: Library, rng: np.random.Generator, inst: Instrument) -> Clip:
    """A sampled instrument playing one of :data:`PATTERNS`, low or high, slow or fast."""
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    high = bool(rng.random() < 0.5)
    fast = bool(rng.random() < 0.5)
    base = inst.high if high else inst.low
    beat = float(rng.uniform(0.18, 0.3) if fast else rng.uniform(0.5, 0.8))
    notes = _pattern_notes(pattern, base, beat, rng)
    wave = _fit_length(np.concatenate([np.zeros(int(rng.uniform(0.1, 0.5) * SR), np.float32),
                                       lib.render(inst.program, notes)]), rng)
    captions = _captions(rng, _PATTERN_CAPTIONS[pattern], I=inst.names, reg="high" if high else "low",
                         pace="quickly" if fast else "slowly", speed="fast" if fast else "slow")
    return Clip(wave, captions, "instrument", f"instrument:{inst.family}",
                (inst.names[0].split()[-1], pattern, "high" if high else "low", "fast" if fast else "slow"),
                (f"soundfont:{inst.program}",))


_PATTERN_CAPTIONS = {
    "rising": ("{I} plays a rising scale {pace}", "an ascending scale played on {I}",
               "{I} plays notes that go up in pitch", "a {speed} scale climbing upward on {I}",
               "{I} playing a scale from low to high", "{I} runs up a {reg} scale"),
    "falling": ("{I} plays a falling scale {pace}", "a descending scale played on {I}",
                "{I} plays notes that go down in pitch", "a {speed} scale stepping downward on {I}",
                "{I} playing a scale from high to low", "{I} runs down a {reg} scale"),
    "single": ("{I} plays one long {reg} note", "a single sustained note on {I}",
               "{I} holds a {reg} note that slowly fades", "one note rings out from {I}",
               "{I} sounds a single long tone", "a lone {reg} note played on {I}"),
    "repeated": ("{I} plays the same note over and over", "{I} repeats one {reg} note {pace}",
                 "a single pitch played repeatedly on {I}", "{I} plays a {speed} series of identical notes",
                 "the same note is played again and again on {I}", "{I} strikes one {reg} note repeatedly"),
    "chords": ("{I} plays a series of chords", "{speed} chords played on {I}",
               "{I} plays several {reg} chords {pace}", "chords change {pace} on {I}",
               "{I} plays harmonies, one chord after another", "a sequence of full chords from {I}"),
    "arpeggio": ("{I} plays fast arpeggios", "broken chords rippling up and down on {I}",
                 "{I} plays an arpeggio pattern {pace}", "notes of a chord played one after another on {I}",
                 "{I} plays a rippling {reg} arpeggio", "an arpeggiated chord pattern on {I}"),
    "melody": ("{I} plays a simple melody {pace}", "a {speed} tune played on {I}",
               "{I} plays a short {reg} melody", "a melody wanders up and down on {I}",
               "someone plays a little tune on {I}", "a {reg} pitched tune from {I}"),
}


_DRUMS = {
    "beat": ((36, 38, 42), ("a drum kit plays a steady beat", "a rock drum beat with kick and snare",
                            "drums keep a regular rhythm", "a drummer plays a simple groove",
                            "kick drum, snare and hi-hat play a beat", "a steady drum pattern repeats")),
    "claps": ((39,), ("hands clapping in rhythm", "someone claps their hands steadily",
                      "a series of hand claps", "rhythmic clapping of hands", "people clap along to a beat",
                      "claps repeat at a steady pace")),
    "cowbell": ((56,), ("a cowbell is struck repeatedly", "someone hits a cowbell in rhythm",
                        "a ringing metallic cowbell pattern", "the clank of a cowbell over and over",
                        "a cowbell keeps time", "repeated strikes on a cowbell")),
    "tambourine": ((54,), ("a tambourine shakes in rhythm", "someone plays a tambourine",
                           "the jingle of a tambourine beating time", "a tambourine is shaken and struck",
                           "rhythmic jingling from a tambourine", "a tambourine keeps a steady beat")),
    "bongos": ((60, 61, 64), ("bongos and congas play a rhythm", "hand drums play a lively pattern",
                              "someone plays the bongos", "a rhythm on hand drums",
                              "conga and bongo drums beat together", "a percussionist taps hand drums")),
}


def percussion_clip(lib: Library, rng: np.random.Generator) -> Clip:
    """A drum-kit beat, claps, cowbell, tambourine or hand drums (GM percussion channel)."""
    kind = list(_DRUMS)[int(rng.integers(len(_DRUMS)))]
    pitches, captions = _DRUMS[kind]
    beat = float(rng.uniform(0.22, 0.45))
    notes = []
    for i in range(int(rng.integers(8, 20))):
        if kind == "beat":
            notes.append(Note(i * beat, 0.1, 42, 70))
            if i % 2 == 0:
                notes.append(Note(i * beat, 0.1, 36 if i % 4 == 0 else 38, 100))
        else:
            notes.append(Note(i * beat, 0.1, pitches[i % len(pitches)], int(rng.integers(70, 110))))
    wave = _fit_length(lib.render(-1, notes), rng)
    order = rng.permutation(len(captions))[:5]
    return Clip(wave, tuple(_cap(captions[int(i)]) for i in order), "percussion", "percussion:drums",
                (kind,), (f"soundfont:drums:{kind}",))


def speech_clip(lib: Library, rng: np.random.Generator, suffix: str, numbers: list[str],
                sentences: list[str]) -> Clip:
    """Someone counting in a language (numbers 0-9 in order), or speaking a few sentences in it."""
    lang = LANGUAGES[suffix]
    counting = bool(numbers) and (not sentences or rng.random() < 0.5)
    if counting:
        lo = int(rng.integers(0, 5))
        hi = int(rng.integers(lo + 2, min(lo + 6, 9) + 1))
        keys = [k for k in numbers if lo <= int(k.rsplit("/", 1)[-1].split("_", 1)[0]) <= hi]
        keys.sort(key=lambda k: int(k.rsplit("/", 1)[-1].split("_", 1)[0]))
        gaps = [float(rng.uniform(0.25, 0.7)) for _ in keys[:-1]]
        wave = _place([lib.get(k) for k in keys], gaps, float(rng.uniform(0.1, 0.5)))
        templates = ("someone counts from {a} to {b} in {lang}", "a voice counting numbers in {lang}",
                     "a person says numbers aloud in {lang}", "counting in {lang}, one number at a time",
                     "a speaker counts slowly in {lang}", "numbers from {a} to {b} are spoken in {lang}")
        kind = "counting"
    else:
        picks = rng.choice(len(sentences), size=min(len(sentences), int(rng.integers(1, 4))), replace=False)
        keys = [sentences[int(i)] for i in picks]
        gaps = [float(rng.uniform(0.3, 0.8)) for _ in keys[:-1]]
        wave = _place([lib.get(k) for k in keys], gaps, float(rng.uniform(0.1, 0.5)))
        templates = ("a person speaks in {lang}", "someone talking in {lang}",
                     "a voice says a few sentences in {lang}", "speech in the {lang} language",
                     "a narrator reads aloud in {lang}", "a person describes something in {lang}")
        lo = hi = 0
        kind = "talking"
    wave = _fit_length(wave, rng)
    captions = _captions(rng, templates, lang=lang, a=NUMBER_WORDS[lo], b=NUMBER_WORDS[hi])
    return Clip(wave, captions, "speech", "speech:voice", (lang, kind), tuple(keys))


@dataclass(frozen=True)
class Inventory:
    """The recordings available to the recipes (keys the :class:`Library` loader understands)."""

    sounds: tuple[Sound, ...]
    numbers: dict[str, list[str]]  # language suffix -> keys of its spoken digits
    sentences: dict[str, list[str]]  # language suffix -> keys of its spoken descriptions
    instruments: tuple[Instrument, ...] = INSTRUMENTS
    has_soundfont: bool = True


def compose(lib: Library, inventory: Inventory, n_clips: int, seed: int = 0) -> list[Clip]:
    """``n_clips`` clips, recipe by recipe in the proportions of :data:`RECIPES`, seeded."""
    rng = np.random.default_rng(seed)
    recipes = dict(RECIPES)
    if not inventory.has_soundfont:
        recipes.pop("instrument")
        recipes.pop("percussion")
    langs = sorted(set(inventory.numbers) | set(inventory.sentences))
    if not langs:
        recipes.pop("speech")
    names = list(recipes)
    weights = np.array([recipes[k] for k in names])
    # Exact proportions (largest remainder), then a seeded order.
    quota = weights / weights.sum() * n_clips
    counts = np.floor(quota).astype(int)
    for i in np.argsort(-(quota - counts))[: n_clips - counts.sum()]:
        counts[i] += 1
    plan = [name for name, c in zip(names, counts, strict=True) for _ in range(c)]
    plan = [plan[int(i)] for i in rng.permutation(len(plan))]
    sounds = inventory.sounds
    # Each sound and instrument is used in turn (a seeded order), so every label appears.
    deck: dict[str, list] = {}

    def draw(name: str, items: Sequence) -> object:
        if not deck.get(name):
            deck[name] = [items[int(i)] for i in rng.permutation(len(items))]
        return deck[name].pop()

    clips = []
    for recipe in plan:
        if recipe == "repeat":
            clips.append(repeat_clip(lib, rng, draw("sound", sounds)))
        elif recipe == "background":
            clips.append(background_clip(lib, rng, draw("sound", sounds)))
        elif recipe == "sequence":
            a = draw("sound", sounds)
            b = draw("sound", sounds)
            while b.subject == a.subject:
                b = draw("sound", sounds)
            clips.append(sequence_clip(lib, rng, a, b))
        elif recipe == "instrument":
            clips.append(instrument_clip(lib, rng, draw("instrument", inventory.instruments)))
        elif recipe == "percussion":
            clips.append(percussion_clip(lib, rng))
        else:
            suffix = draw("language", langs)
            clips.append(speech_clip(lib, rng, suffix, inventory.numbers.get(suffix, []),
                                     inventory.sentences.get(suffix, [])))
    return clips
