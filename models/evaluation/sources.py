"""Per-source item vectors for the probes and tasks, pluggable as ``{source name: vectors}``.

The live model's item vector is ProdSI2Vec's ``id vector + mean(attribute-token vectors)``;
the two parts are the two sources it already holds:

* ``behaviour``: the id vector, the part learned from clicks only (zero for an item never
  clicked: no behaviour source);
* ``attributes``: the mean of the item's attribute-token vectors, optionally *withholding*
  the tokens of one attribute (the one a probe predicts, which it would otherwise read);
* ``text``: the catalogue-text denoising autoencoder (``onevec.models.static.text_autoencoder``) over the
  words of the item's free text, when the catalogue has text;
* ``unified``: paper 1's fusion of whichever of the above the item has
  (``onevec.models.fusion.fuse_batch``, availability-aware, equal weights unless given).

Another source (an image encoder, say) is one more entry of the mapping.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import numpy as np

from onevec.models.fusion import fuse_batch
from onevec.models.online.trainer import OnlineTrainer

__all__ = ["attribute_vectors", "behaviour_vectors", "text_vectors", "unified"]


def behaviour_vectors(trainer: OnlineTrainer, items: Sequence[str]) -> np.ndarray:
    encoder = trainer.item_encoder
    table = encoder.tables["item"].detach().numpy()
    out = np.zeros((len(items), encoder.config.dim), dtype=np.float32)
    for i, item in enumerate(items):
        row = encoder.item_vocab.get(item)
        if row is not None:
            out[i] = table[row]
    return out


def attribute_vectors(
    trainer: OnlineTrainer, items: Sequence[str], withhold: Collection[str] = ()
) -> np.ndarray:
    """Mean attribute-token vector per item; the tokens of the ``withhold`` attributes left out."""
    encoder = trainer.item_encoder
    tokens = encoder.vocabularies["token"]
    table = encoder.tables["token"].detach().numpy()
    prefixes = tuple(f"{key}=" for key in withhold)
    out = np.zeros((len(items), encoder.config.dim), dtype=np.float32)
    for i, item in enumerate(items):
        row = encoder.item_vocab.get(item)
        if row is None:
            continue
        kept = [t for t in encoder.item_tokens[row] if not tokens.key(t).startswith(prefixes)]
        if kept:
            out[i] = table[kept].mean(0)
    return out


def text_vectors(
    texts: Mapping[str, str], items: Sequence[str], dim: int = 64, epochs: int = 40
) -> np.ndarray | None:
    """Text vectors from a denoising autoencoder trained on the catalogue's words; None when
    the catalogue has no usable text."""
    from onevec.models.static.text_autoencoder import TextAutoencoder, TokenVocabulary, words

    documents = {item: words(text) for item, text in texts.items()}
    vocabulary = TokenVocabulary.build(documents.values(), min_count=2)
    if len(vocabulary) < 2:
        return None
    model = TextAutoencoder(vocabulary, dim=dim, seed=0)
    model.fit(list(documents.values()), epochs=epochs)
    return model.encode([documents.get(item, []) for item in items])


def unified(sources: Mapping[str, np.ndarray], weights: Mapping[str, float] | None = None) -> np.ndarray:
    """Paper 1's unified vector over the given sources (equal weights by default)."""
    return fuse_batch(sources, weights or dict.fromkeys(sources, 1.0))
