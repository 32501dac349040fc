"""onevec's models: online item and session encoders, fusion of sources, version alignment.

* ``vocab.Vocabulary``: growing string -> row map.
* ``item_encoder.ItemEncoder``: ProdSI2Vec-style item vectors (ids + attribute tokens),
  trained with skip-gram/negative sampling or BPR.
* ``session_encoder.SessionEncoder``: session prefix -> vector in the item space.
* ``trainer.OnlineTrainer``: both encoders, one optimiser, checkpoints with input offsets.
* ``fusion``: unified vector from behaviour/text/image vectors.
* ``alignment``: orthogonal Procrustes between versions, linear CKA.

Submodules are imported explicitly (``from onevec.models.online.trainer import OnlineTrainer``) so that a
light user such as ``onevec.models.fusion`` does not pull in torch.
"""

__all__ = [
    "alignment",
    "base",
    "config",
    "fusion",
    "item_encoder",
    "optim",
    "session_encoder",
    "trainer",
    "vocab",
]
