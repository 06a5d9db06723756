"""The server's store of encoded pictures: LRU by count and bytes, ids
unguessable, evicted ids told apart from unknown ones."""

import numpy as np
import pytest

from keras_sam.serve.sessions import ImageEntry
from keras_sam.serve.sessions import ImageNotFound
from keras_sam.serve.sessions import ImageStore


def entry(pixels: int = 4) -> ImageEntry:
    return ImageEntry(
        image=np.zeros((pixels, 1, 3), np.uint8),
        embedding=np.zeros((1, 2, 2, 4), np.float32),
    )


def test_least_recently_used_goes_first():
    store = ImageStore(max_images=2)
    a, b = store.add(entry()), store.add(entry())
    store.get(a)  # a is now more recent than b
    c = store.add(entry())
    assert len(store) == 2
    store.get(a), store.get(c)
    with pytest.raises(ImageNotFound, match="evicted"):
        store.get(b)
    with pytest.raises(ImageNotFound, match="no image zzz"):
        store.get("zzz")


def test_byte_budget_evicts_but_keeps_the_newest():
    one = entry(100)
    store = ImageStore(max_images=10, max_bytes=2 * one.nbytes)
    ids = [store.add(entry(100)) for _ in range(3)]
    assert len(store) == 2 and store.nbytes <= 2 * one.nbytes
    with pytest.raises(ImageNotFound, match="evicted"):
        store.get(ids[0])
    # one entry over the budget on its own is still kept, alone
    big = store.add(entry(1000))
    assert len(store) == 1 and store.get(big).size == (1000, 1)


def test_ids_are_random_and_remove_forgets():
    store = ImageStore(max_images=64)
    ids = {store.add(entry()) for _ in range(50)}
    assert len(ids) == 50 and min(len(i) for i in ids) >= 22
    some = ids.pop()
    store.remove(some)
    with pytest.raises(ImageNotFound):
        store.get(some)
    with pytest.raises(ImageNotFound):
        store.remove(some)


@pytest.mark.parametrize("arg", ["max_images", "max_bytes"])
def test_limits_are_checked(arg):
    with pytest.raises(ValueError, match=arg):
        ImageStore(**{arg: 0})
