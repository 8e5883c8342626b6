"""The two encoders as RunInference model handlers, and their output turned into :class:`Vector` s.

Both handlers share :class:`EncoderHandler`: it loads the model directory once per worker process
(RunInference keeps the loaded model in a shared handle), resolves ``--device`` there, batches
up to ``--batch_size`` examples and labels every result with the model directory. A subclass says
only what it loads with the model (word vectors or not) and how it encodes a batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from atr_core.runtime.device import resolve_device
from atr_core.search.searcher import encode_captions, encode_segments
from pipelines.embed.records import FAILED, NS, Vector, counter

LOG = logging.getLogger(__name__)
ExampleT = TypeVar("ExampleT")


@dataclass
class LoadedEncoder:
    """What a worker loads per model directory: the network, its config, word vectors, the device.

    (A class, not a tuple: RunInference keeps loaded models in weak references.)
    """

    net: Any
    config: Any
    word_vectors: Any
    device: Any


class EncoderHandler(ModelHandler[ExampleT, PredictionResult, LoadedEncoder]):
    """RunInference handler of one trained model directory; subclasses give ``load_args`` and ``encode``."""

    def __init__(self, model_dir: str, device: str = "auto", batch_size: int = 64):
        # A fixed batch size (Beam's BatchElements otherwise adapts it to timing): the same inputs
        # give the same batches, so vectors are byte-identical from run to run.
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._model_dir = model_dir
        self._device_name = device

    def load_args(self) -> dict[str, Any]:
        """Keyword arguments of ``atr_core.model.directory.load_model`` besides the directory and device."""
        return {"with_word_vectors": False}

    def encode(self, batch: Sequence[ExampleT], model: LoadedEncoder) -> np.ndarray:
        """Unit vectors (B, E) of one batch."""
        raise NotImplementedError(type(self))

    def load_model(self) -> LoadedEncoder:
        from atr_core.model import directory as model_io

        device = resolve_device(self._device_name)
        net, config, wv = model_io.load_model(self._model_dir, device=device, **self.load_args())
        return LoadedEncoder(net, config, wv, device)

    def run_inference(
        self, batch: Sequence[ExampleT], model: LoadedEncoder, inference_args: dict[str, Any] | None = None
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(None, v, self._model_dir) for v in self.encode(batch, model)]

    def get_num_bytes(self, batch: Sequence[ExampleT]) -> int:
        return int(sum(len(x.encode("utf-8")) if isinstance(x, str) else np.asarray(x).nbytes for x in batch))

    def get_metrics_namespace(self) -> str:
        return NS


class AudioEncoderHandler(EncoderHandler[np.ndarray]):
    """(T, D) segment arrays -> unit audio vectors, via ``model.encode_audio`` (no word vectors loaded).

    Each batch is zero-padded to the model's ``max_segments`` with a mask, exactly like the training
    loader; the masked aggregation makes a clip's vector independent of its batch.
    """

    def __init__(self, model_dir: str, max_segments: int, device: str = "auto", batch_size: int = 64):
        super().__init__(model_dir, device, batch_size)
        self._max_segments = max_segments

    def encode(self, batch: Sequence[np.ndarray], model: LoadedEncoder) -> np.ndarray:
        return encode_segments(model.net, batch, self._max_segments, model.device)


class TextEncoderHandler(EncoderHandler[str]):
    """Caption strings -> unit text vectors (the model's word vectors, or ``--word2vec``, then
    ``model.encode_text``), each capped at the model's ``max_words``."""

    def __init__(self, model_dir: str, word2vec: str | None, device: str = "auto", batch_size: int = 64):
        super().__init__(model_dir, device, batch_size)
        self._word2vec = word2vec

    def load_args(self) -> dict[str, Any]:
        return {"word_vectors": self._word2vec}

    def encode(self, batch: Sequence[str], model: LoadedEncoder) -> np.ndarray:
        return encode_captions(model.net, model.word_vectors, batch, model.config.max_words, model.device)


class ToVectors(beam.DoFn):
    """RunInference output -> :class:`Vector` records, counting them (and non-finite vectors)."""

    def __init__(self, kind: str, model: str, clip_split: dict[str, str] | None = None):
        self._kind = kind
        self._model = model
        self._clip_split = clip_split

    def setup(self) -> None:
        self._count = counter(f"{self._kind}_vectors[{self._model}]")
        self._failed = counter(f"{self._kind}_failed[{self._model}]")

    def process(self, item: tuple[Any, PredictionResult]) -> Iterator[Any]:
        key, result = item
        vec = np.asarray(result.inference, dtype=np.float32)
        if not np.isfinite(vec).all():
            self._failed.inc()
            what, split = (
                (key, self._clip_split[key]) if self._kind == "audio" else (key.caption_id, key.split)
            )
            yield beam.pvalue.TaggedOutput(
                FAILED,
                {
                    "model": self._model,
                    "kind": self._kind,
                    "id": what,
                    "split": split,
                    "error_type": "non_finite_vector",
                    "message": f"the {self._kind} vector of {what!r} is not finite (NaN/inf in its input?); "
                    "left out of the vectors and the metrics",
                },
            )
            return
        self._count.inc()
        if self._kind == "audio":
            yield Vector(key, "audio", self._clip_split[key], key, None, vec)
        else:
            yield Vector(key.caption_id, "caption", key.split, key.audio_id, key.text, vec)
