"""The server's encoded pictures: an LRU bounded in count and bytes."""

import collections
import dataclasses
import secrets
import threading

import numpy as np


class ImageNotFound(LookupError):
    """An image id the store does not hold; the message says whether it
    was evicted or never existed."""


@dataclasses.dataclass
class ImageEntry:
    """One encoded picture.

    Attributes:
        image: uint8 `(H, W, 3)` RGB, as read (the automatic mask
            generator needs the pixels).
        embedding: float32 `(1, He, We, C)` image embedding.
        last_logits: float32 `(K, 256, 256)` low-res logits of the last
            remembered prediction, or None.
        last_scores: float32 `(K,)` their predicted IoUs, or None.
        progress: `(done, total)` point batches of a running "segment
            everything", or None.
    """

    image: np.ndarray
    embedding: np.ndarray
    last_logits: np.ndarray | None = None
    last_scores: np.ndarray | None = None
    progress: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """`(H, W)` of the picture."""
        return self.image.shape[0], self.image.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the picture and its embedding."""
        return int(self.image.nbytes + self.embedding.nbytes)


class ImageStore:
    """Encoded pictures by unguessable id, least recently used evicted.

    Ids are 128-bit random tokens (`secrets.token_urlsafe`), so a client
    can only reach the pictures it uploaded: nothing lists them. At most
    `max_images` entries and `max_bytes` bytes of pictures and embeddings
    are kept; adding one evicts the least recently used. The ids of the
    last `max_images * 16` evictions are remembered (ids only), so that a
    request for one says it was evicted rather than unknown. Thread-safe.

    Args:
        max_images: most entries kept, >= 1.
        max_bytes: most bytes of pictures and embeddings kept, >= 1; one
            entry larger than this is still kept (alone).
    """

    def __init__(self, *, max_images: int = 16, max_bytes: int = 2**31):
        if int(max_images) < 1:
            raise ValueError(
                f"max_images must be at least 1. Received: "
                f"max_images={max_images}"
            )
        if int(max_bytes) < 1:
            raise ValueError(
                f"max_bytes must be at least 1. Received: max_bytes={max_bytes}"
            )
        self.max_images = int(max_images)
        self.max_bytes = int(max_bytes)
        self._entries: collections.OrderedDict[str, ImageEntry] = (
            collections.OrderedDict()
        )
        self._evicted: collections.OrderedDict[str, None] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Bytes held by every entry."""
        with self._lock:
            return sum(e.nbytes for e in self._entries.values())

    def add(self, entry: ImageEntry) -> str:
        """Keep `entry`; its new id."""
        image_id = secrets.token_urlsafe(16)
        with self._lock:
            self._entries[image_id] = entry
            total = sum(e.nbytes for e in self._entries.values())
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_images or total > self.max_bytes
            ):
                old_id, old = self._entries.popitem(last=False)
                total -= old.nbytes
                self._forget(old_id)
        return image_id

    def get(self, image_id: str) -> ImageEntry:
        """The entry of `image_id`, now the most recently used.

        Raises:
            ImageNotFound: an evicted or unknown id.
        """
        with self._lock:
            entry = self._entries.get(image_id)
            if entry is None:
                raise ImageNotFound(self._missing(image_id))
            self._entries.move_to_end(image_id)
            return entry

    def remove(self, image_id: str) -> None:
        """Forget `image_id`.

        Raises:
            ImageNotFound: an evicted or unknown id.
        """
        with self._lock:
            if self._entries.pop(image_id, None) is None:
                raise ImageNotFound(self._missing(image_id))

    def _forget(self, image_id: str) -> None:
        self._evicted[image_id] = None
        while len(self._evicted) > self.max_images * 16:
            self._evicted.popitem(last=False)

    def _missing(self, image_id: str) -> str:
        if image_id in self._evicted:
            return (
                f"image {image_id} was evicted to make room for newer "
                f"pictures (the server keeps {self.max_images}); upload it "
                "again"
            )
        return f"no image {image_id} on this server; upload it first"
