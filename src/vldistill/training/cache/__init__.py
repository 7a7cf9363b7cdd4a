"""The teacher cache: frozen teachers' targets computed once, stored as safetensors shards.

Layout of one cache (``<cache dir>/teachers/<key>/``), storage format 2 (``FORMAT``):

- **Rows per image, per text, per example.** A target that depends on one image alone (tokens,
  embedding, grid) is stored once per distinct image, keyed by the sha256 of the image file's bytes;
  one that depends on one text alone once per distinct string; what depends on the pair (a fusion
  teacher's attention and logits, zero-shot candidate scores) once per example, keyed by its uid and
  content (``keys.py``). VQA v2 train asks 5.4 questions per image and SNLI-VE 17.8 hypotheses per
  image, so storing images once divides their share by as much. Shards ``shard-img-*``,
  ``shard-txt-*``, ``shard-ex-*.safetensors`` (``shards.py``), ``meta.json`` (the format, the key's
  parts and each store's shard list) written last and atomically.
- **Derived, not stored.** CLIP's joint-space tokens (``image_token_embeds``, ``text_word_embeds``)
  are one linear map of stored tokens; the maps are stored once (``derived.safetensors``) and the
  lookup applies them (``distill.targets.derive``).
- **Same tensors.** :meth:`TeacherCache.lookup` returns per-example targets with the batch first, as
  the live teachers do (``distill/targets.py``): methods do not know the layout.
- **Key.** sha256 of the storage format and dtype, every teacher's fingerprint (architecture,
  weights, processor), the method's target settings and the training split's annotation files. A
  stale cache, or one of the old per-example format, is simply another key.
- **Incremental.** A run that needs more examples computes only the missing images, texts and rows.
- **Memory-mapped.** Shards are read with ``numpy.memmap`` at the offsets of the safetensors header,
  so looking up a batch touches only its rows; a cache larger than RAM works.
- **Distributed.** Under accelerate each rank computes every ``world``-th batch of each phase
  (images, texts, then example rows) into its own shards; the main process lists all shards in
  ``meta.json`` between phases; every rank reads all.
- **Concurrent runs.** Single-process runs that share a cache (a protocol's runs at once, ``--jobs``)
  take turns on a file lock (``.build.lock``, the ``filelock`` package): the first computes the
  missing rows, the next finds them there; two never write the same shard.
- **Storage dtypes.** ``cache.fp16`` stores the large fields in float16, ``cache.int8`` in int8 with
  a scale per token (``shards.py``); vectors stay float32.
"""

from vldistill.training.cache.build import cache_key, ensure_cache, open_teacher_cache
from vldistill.training.cache.keys import ContentKeys, Refs
from vldistill.training.cache.teacher_cache import FORMAT, META, TeacherCache, storage_of

__all__ = [
    "FORMAT",
    "META",
    "ContentKeys",
    "Refs",
    "TeacherCache",
    "cache_key",
    "ensure_cache",
    "open_teacher_cache",
    "storage_of",
]
