"""What each packaged recording is: the labels that the corpus captions are written from.

Every entry names one recording of the Tux Paint stamps package by its path (without ``.ogg``)
and says, in words, what is heard: the sound's source (``subject``, with synonyms), what it does
(``verb`` in the third person and as ``gerund``) and a coarse ``category``. The labels come from
the stamp the sound belongs to (``dog.ogg`` is the dog stamp's sound); stamps whose sound could not
be told from their name (``ghost``, ``gift``, road signs, ...) are left out.

Speech and instruments are described by :data:`LANGUAGES` and :data:`INSTRUMENTS`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sound:
    """One labelled recording (or a family of equivalent ones)."""

    key: str  # path below the stamps directory, without extension
    subjects: tuple[str, ...]  # "a dog", "a puppy": the first is the plain label
    verb: str  # "barks"
    gerund: str  # "barking"
    category: str  # animal, bird, insect, household, tool, vehicle, nature, percussion, ...
    plural: bool = False  # subject takes a plural verb ("fireworks explode")

    @property
    def subject(self) -> str:
        return self.subjects[0]


def _s(key, subjects, verb, gerund, category, plural=False) -> Sound:
    if isinstance(subjects, str):
        subjects = (subjects,)
    return Sound(key, tuple(subjects), verb, gerund, category, plural)


A = "animals/"
M = A + "mammals/"
SOUNDS: tuple[Sound, ...] = (
    # amphibians, birds
    _s(A + "amphibians/frog", ("a frog", "a toad"), "croaks", "croaking", "animal"),
    _s(A + "birds/blackbird", ("a blackbird", "a songbird"), "sings", "singing", "bird"),
    _s(A + "birds/crow", ("a crow", "a raven"), "caws", "cawing", "bird"),
    _s(A + "birds/cuckoo", "a cuckoo", "calls", "calling", "bird"),
    _s(A + "birds/drake", ("a duck", "a drake"), "quacks", "quacking", "bird"),
    _s(A + "birds/duck", ("a duck", "a mallard"), "quacks", "quacking", "bird"),
    _s(A + "birds/gander", ("a goose", "a gander"), "honks", "honking", "bird"),
    _s(A + "birds/hen", ("a hen", "a chicken"), "clucks", "clucking", "bird"),
    _s(A + "birds/lark", ("a lark", "a small bird"), "sings", "singing", "bird"),
    _s(A + "birds/owl", "an owl", "hoots", "hooting", "bird"),
    _s(A + "birds/penguin", "a penguin", "squawks", "squawking", "bird"),
    _s(A + "birds/rooster", ("a rooster", "a cockerel"), "crows", "crowing", "bird"),
    _s(A + "birds/seagull", ("a seagull", "a gull"), "cries", "crying", "bird"),
    _s(A + "birds/tucan", ("a toucan", "a tropical bird"), "croaks", "croaking", "bird"),
    _s(A + "birds/turkey", "a turkey", "gobbles", "gobbling", "bird"),
    _s(A + "birds/vulture", ("a vulture", "a large bird"), "screeches", "screeching", "bird"),
    # insects
    _s(A + "insects/bee", ("a bee", "a bumblebee"), "buzzes", "buzzing", "insect"),
    _s(A + "insects/grasshopper", ("a grasshopper", "a cricket"), "chirps", "chirping", "insect"),
    _s(A + "insects/hornet", ("a hornet", "a wasp"), "buzzes", "buzzing", "insect"),
    _s(A + "insects/mosquito", ("a mosquito", "a gnat"), "whines", "whining", "insect"),
    # mammals
    _s(M + "apes/chimp", ("a chimpanzee", "a monkey"), "screams", "screaming", "animal"),
    _s(M + "apes/gorilla", ("a gorilla", "an ape"), "grunts", "grunting", "animal"),
    _s(M + "aquatic/dolphin", "a dolphin", "clicks and whistles", "clicking and whistling", "animal"),
    _s(M + "aquatic/orca", ("an orca", "a killer whale"), "whistles", "whistling", "animal"),
    _s(M + "aquatic/sea_lion", ("a sea lion", "a seal"), "barks", "barking", "animal"),
    _s(M + "aquatic/whale", "a whale", "sings", "singing", "animal"),
    _s(M + "badger", "a badger", "snarls", "snarling", "animal"),
    _s(M + "bears/bear", ("a bear", "a grizzly bear"), "growls", "growling", "animal"),
    _s(M + "bovines/bison", ("a bison", "a buffalo"), "grunts", "grunting", "animal"),
    _s(M + "bovines/bull", "a bull", "bellows", "bellowing", "animal"),
    _s(M + "bovines/cow", ("a cow", "a dairy cow"), "moos", "mooing", "animal"),
    _s(M + "bovines/cow_white", ("a cow", "a calf"), "moos", "mooing", "animal"),
    _s(M + "bovines/goat", ("a goat", "a young goat"), "bleats", "bleating", "animal"),
    _s(M + "bovines/mountaingoat", ("a goat", "a mountain goat"), "bleats", "bleating", "animal"),
    _s(M + "bovines/ram", ("a ram", "a sheep"), "bleats", "bleating", "animal"),
    _s(M + "bovines/sheep", ("a sheep", "an ewe"), "bleats", "bleating", "animal"),
    _s(M + "bovines/sheep_lamb", ("a lamb", "a young sheep"), "bleats", "bleating", "animal"),
    _s(M + "camel/camel", "a camel", "groans", "groaning", "animal"),
    _s(M + "camel/dromedary", ("a camel", "a dromedary"), "groans", "groaning", "animal"),
    _s(M + "cats/lion", ("a lion", "a big cat"), "roars", "roaring", "animal"),
    _s(M + "cats/tiger", ("a tiger", "a big cat"), "growls", "growling", "animal"),
    _s(M + "deer/caribou", ("a caribou", "a reindeer"), "grunts", "grunting", "animal"),
    _s(M + "deer/deer", ("a deer", "a stag"), "bellows", "bellowing", "animal"),
    _s(M + "deer/doe", ("a deer", "a doe"), "calls", "calling", "animal"),
    _s(M + "dogs/dog", ("a dog", "a puppy"), "barks", "barking", "animal"),
    _s(M + "dogs/fox", "a fox", "yelps", "yelping", "animal"),
    _s(M + "elephant", "an elephant", "trumpets", "trumpeting", "animal"),
    _s(M + "equines/donkey", ("a donkey", "a mule"), "brays", "braying", "animal"),
    _s(M + "equines/horse", ("a horse", "a pony"), "neighs", "neighing", "animal"),
    _s(M + "equines/zebra", "a zebra", "barks", "barking", "animal"),
    _s(M + "ferret", "a ferret", "chatters", "chattering", "animal"),
    _s(M + "hippopotamus", ("a hippopotamus", "a hippo"), "grunts", "grunting", "animal"),
    _s(M + "pig", ("a pig", "a hog"), "oinks", "oinking", "animal"),
    _s(M + "pig_golden", ("a pig", "a piglet"), "grunts", "grunting", "animal"),
    _s(M + "pig_golden2", ("a pig", "a piglet"), "squeals", "squealing", "animal"),
    _s(M + "rodents/mouse", ("a mouse", "a rat"), "squeaks", "squeaking", "animal"),
    _s(M + "rodents/squirrel", "a squirrel", "chatters", "chattering", "animal"),
    _s(A + "marsupials/koala", "a koala", "bellows", "bellowing", "animal"),
    _s("seasonal/halloween/blackcat", ("a cat", "a kitten"), "meows", "meowing", "animal"),
    # household, food, tools
    _s("food/fruit/apple_red", "someone", "bites into a crunchy apple", "biting into an apple", "household"),
    _s("hobbies/camera_35mm", "a camera", "clicks its shutter", "clicking", "household"),
    _s("household/Washing-machine", "a washing machine", "runs", "running", "household"),
    _s("household/arttools/scissors_small_closed", ("a pair of scissors", "a pair of shears"), "snips",
       "snipping", "tool"),
    _s("household/arttools/scissors_small_open", ("a pair of scissors", "a pair of shears"), "snips",
       "snipping", "tool"),
    _s("household/dishes/glass", ("a glass", "glassware"), "clinks", "clinking", "household"),
    _s("household/kettle", "a kettle", "whistles", "whistling", "household"),
    _s("household/rubberduck", ("a rubber duck", "a squeaky toy"), "squeaks", "squeaking", "household"),
    _s("household/toilet", "a toilet", "flushes", "flushing", "household"),
    _s("household/tools/hammer", "a hammer", "strikes a nail", "hammering", "tool"),
    _s("household/tools/mallet_metal", ("a metal mallet", "a mallet"), "strikes metal", "striking metal",
       "tool"),
    _s("household/tools/saw", ("a saw", "a hand saw"), "cuts through wood", "sawing wood", "tool"),
    _s("household/vacuum_cleaner", ("a vacuum cleaner", "a hoover"), "hums", "humming", "household"),
    # nature, vehicles, instruments recorded in the stamps
    _s("naturalforces/lightningbolt", ("thunder", "a thunderstorm"), "rumbles", "rumbling", "nature"),
    _s("seasonal/newyears/fireworks", "fireworks", "explode", "exploding", "nature", plural=True),
    _s("vehicles/emergency/firetruck", ("a fire truck siren", "a siren"), "wails", "wailing", "vehicle"),
    _s("hobbies/music/percussion/cymbal_crash", "a cymbal", "crashes", "crashing", "percussion"),
    _s("hobbies/music/percussion/drum_tomtom_floor", ("a drum", "a tom drum"), "booms", "booming",
       "percussion"),
    _s("hobbies/music/percussion/drumkit", ("a drum kit", "drums"), "plays a beat", "playing a beat",
       "percussion"),
    _s("hobbies/music/string/cello", "a cello", "plays", "playing", "strings"),
    _s("hobbies/music/string/violin", ("a violin", "a fiddle"), "plays", "playing", "strings"),
    _s("hobbies/music/wind/bassoon", "a bassoon", "plays", "playing", "wind"),
)

#: Recordings that can run under other sounds as a continuous background: key -> phrase.
BACKGROUNDS: dict[str, str] = {
    A + "insects/bee": "bees buzzing",
    A + "insects/grasshopper": "crickets chirping",
    A + "insects/mosquito": "a mosquito whining",
    A + "birds/blackbird": "birds singing",
    "household/Washing-machine": "a washing machine running",
    "household/vacuum_cleaner": "a vacuum cleaner humming",
    "vehicles/emergency/firetruck": "a siren wailing",
    "naturalforces/lightningbolt": "thunder rumbling",
}

#: Spoken-word recordings: file suffix -> language name (numbers 0-9 and stamp descriptions).
LANGUAGES: dict[str, str] = {
    "en_GB": "English", "fr": "French", "es": "Spanish", "de": "German", "ru": "Russian",
    "ro": "Romanian", "ca": "Catalan", "bg": "Bulgarian", "el": "Greek", "ja": "Japanese",
    "ko": "Korean", "nl": "Dutch", "pt": "Portuguese", "sv": "Swedish", "zh_tw": "Chinese",
    "it": "Italian", "nb": "Norwegian", "be": "Belarusian",
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@dataclass(frozen=True)
class Instrument:
    """A General MIDI program of the SoundFont and how captions name it."""

    program: int  # 0-based GM program; -1: the percussion channel
    names: tuple[str, ...]
    family: str
    low: int = 48  # the register's bottom MIDI note for "low" patterns
    high: int = 72


INSTRUMENTS: tuple[Instrument, ...] = (
    Instrument(0, ("a piano", "a grand piano"), "keyboard"),
    Instrument(6, ("a harpsichord",), "keyboard"),
    Instrument(19, ("a church organ", "an organ"), "keyboard"),
    Instrument(21, ("an accordion",), "keyboard"),
    Instrument(12, ("a marimba",), "mallet", 55, 79),
    Instrument(13, ("a xylophone",), "mallet", 60, 84),
    Instrument(14, ("a set of tubular bells", "a chime of bells"), "mallet", 55, 72),
    Instrument(24, ("an acoustic guitar", "a guitar"), "strings", 40, 64),
    Instrument(105, ("a banjo",), "strings", 48, 72),
    Instrument(46, ("a harp",), "strings", 48, 79),
    Instrument(40, ("a violin", "a fiddle"), "strings", 60, 84),
    Instrument(42, ("a cello",), "strings", 36, 57),
    Instrument(56, ("a trumpet",), "brass", 55, 77),
    Instrument(57, ("a trombone",), "brass", 40, 60),
    Instrument(65, ("a saxophone", "an alto saxophone"), "wind", 49, 72),
    Instrument(71, ("a clarinet",), "wind", 50, 74),
    Instrument(73, ("a flute",), "wind", 62, 86),
    Instrument(114, ("a steel drum", "a steel pan"), "mallet", 55, 79),
)
