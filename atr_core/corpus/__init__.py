"""The real-sound corpus: packaged recordings composed into captioned clips (Clotho layout).

``build_corpus(DIR)`` fetches the Debian packages that ship the recordings (:mod:`.sources`),
composes clips whose captions say what is heard (:mod:`.compose`, labels in :mod:`.catalogue`,
sampled instruments via :mod:`.render`) and writes them with stratified splits (:mod:`.build`).
"""

from atr_core.corpus.build import AUDIO_DIR, CORPUS_FILE, SPLITS, build_corpus
from atr_core.corpus.sources import SourcesError, locate_sources

__all__ = ["AUDIO_DIR", "CORPUS_FILE", "SPLITS", "SourcesError", "build_corpus", "locate_sources"]
