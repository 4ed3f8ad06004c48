"""The music vocabulary CLAP labels zero-shot: instruments, genres, moods, techniques, textures."""

INSTRUMENTS = (
    "piano", "electric piano", "organ", "synthesizer", "synth pad", "synth bass", "bass guitar", "double bass",
    "acoustic guitar", "electric guitar", "distorted guitar", "violin", "cello", "string ensemble", "harp",
    "flute", "clarinet", "saxophone", "trumpet", "trombone", "french horn", "brass section", "choir",
    "female vocals", "male vocals", "drum kit", "kick drum", "snare drum", "hi-hats", "cymbals", "hand claps",
    "congas", "tabla", "marimba", "vibraphone", "glockenspiel", "bells", "accordion", "harmonica", "sitar",
    "banjo", "ukulele", "drum machine", "808 bass", "orchestra",
)  # fmt: skip
GENRES = (
    "rock", "pop", "jazz", "blues", "classical", "techno", "house", "drum and bass", "dubstep", "ambient",
    "hip hop", "trap", "reggae", "funk", "disco", "metal", "punk", "folk", "country", "latin", "bossa nova",
    "lo-fi", "cinematic", "chiptune", "gospel", "soul", "r&b", "edm", "trance", "orchestral",
)  # fmt: skip
MOODS = (
    "happy", "sad", "melancholic", "energetic", "calm", "relaxing", "dark", "uplifting", "tense", "epic",
    "romantic", "mysterious", "aggressive", "dreamy", "playful",
)  # fmt: skip
TECHNIQUES = (
    "arpeggio", "staccato", "legato", "pizzicato", "tremolo", "vibrato", "glissando", "power chords",
    "strumming", "fingerpicking", "drum fill", "drum roll", "slap bass", "walking bass", "syncopation",
    "four on the floor", "swing rhythm", "solo", "chord progression", "riff",
)  # fmt: skip
TEXTURES = (
    "reverb", "distortion", "echo", "sidechain pumping", "noise", "silence", "sparse", "dense", "bright",
    "warm", "lo-fi crackle", "wide stereo", "bass-heavy", "high-pitched", "low-pitched", "fast tempo",
    "slow tempo", "crescendo", "fade out", "breakdown", "build-up", "drop",
)  # fmt: skip
VOCABULARY: tuple[str, ...] = INSTRUMENTS + GENRES + MOODS + TECHNIQUES + TEXTURES
