"""Caption text features: the tokeniser and word vectors (word2vec files, ``train:DIM``, GloVe).

:mod:`.word_vectors` loads word2vec-format files (local, gs://, https) or trains fallback vectors
on the captions; :mod:`.glove` exports the packaged GloVe vectors as a word2vec file.
"""

from atr_core.text.glove import export_packaged_glove, vectors_label
from atr_core.text.word_vectors import WordVectors, load_word_vectors, tokenize, train_word_vectors

__all__ = [
    "WordVectors",
    "export_packaged_glove",
    "load_word_vectors",
    "tokenize",
    "train_word_vectors",
    "vectors_label",
]
