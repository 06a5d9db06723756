"""The cache of checkpoints read: same arrays as the file, never a stale or
damaged entry, off when asked, safe with concurrent processes."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import torch

import keras_sam
from keras_sam.convert import cache
from keras_sam.convert import checkpoint
from support.fixtures import ENCODER
from support.reference import official

ROOT = Path(__file__).resolve().parents[2]
READ_STATE_DICT = checkpoint.read_state_dict


@pytest.fixture(autouse=True)
def folder(tmp_path, monkeypatch) -> Path:
    """The cache's checkpoint folder, empty; files the tests make are
    cached at once (no racy-file delay)."""
    monkeypatch.setenv("KERAS_SAM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(cache.DISABLE_VARIABLE, raising=False)
    monkeypatch.setattr(cache, "RACY_SECONDS", 0.0)
    return tmp_path / "cache" / "checkpoints"


@pytest.fixture
def reads(monkeypatch) -> list:
    """The paths `read_state_dict` read (the file itself, not the cache)."""
    seen = []

    def counting(path):
        seen.append(Path(path))
        return READ_STATE_DICT(path)

    monkeypatch.setattr(checkpoint, "read_state_dict", counting)
    return seen


@pytest.fixture(scope="module")
def states() -> list[dict]:
    """Two official state dicts of the tiny configuration (seeds 0, 1)."""
    return [
        official.make_sam(
            ENCODER,
            prompt_dim=32,
            decoder_mlp_dim=64,
            decoder_heads=2,
            seed=seed,
        ).state_dict()
        for seed in (0, 1)
    ]


def save(state, path: Path) -> Path:
    torch.save(state, path)
    return path


def entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def assert_same_arrays(got: dict, expected: dict) -> None:
    assert list(got) == list(expected)
    for key in expected:
        assert got[key].dtype == expected[key].dtype, key
        assert got[key].shape == expected[key].shape, key
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)


def test_a_hit_gives_the_arrays_of_the_file(tmp_path, folder, reads, states):
    path = save(states[0], tmp_path / "sam.pth")
    expected = READ_STATE_DICT(path)
    assert_same_arrays(cache.read_checkpoint(path), expected)
    assert reads == [path]
    assert len(entries(folder)) == 1
    assert_same_arrays(cache.read_checkpoint(path), expected)
    assert reads == [path]  # the second from the cache


def test_dtypes_and_layouts_as_the_file_gives_them(tmp_path, reads):
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "transposed": torch.randn(3, 5, generator=generator).t(),
        "float64": torch.randn(4, dtype=torch.float64, generator=generator),
        "bfloat16": torch.randn(6, generator=generator).bfloat16(),
        "float16": torch.randn(2, 2, generator=generator).half(),
        "scalar_like": torch.randn(1, generator=generator),
    }
    path = save(tensors, tmp_path / "mixed.pt")
    expected = READ_STATE_DICT(path)
    cache.read_checkpoint(path)
    got = cache.read_checkpoint(path)
    assert len(reads) == 1
    assert_same_arrays(got, expected)
    assert got["float64"].dtype == np.float64
    assert got["bfloat16"].dtype == np.float32


def test_from_checkpoint_through_the_cache_equals_the_file(
    tmp_path, reads, states
):
    path = save(states[0], tmp_path / "sam.pth")
    fresh = keras_sam.SAM.from_checkpoint(path, use_cache=False)
    keras_sam.SAM.from_checkpoint(path)  # stores it
    cached = keras_sam.SAM.from_checkpoint(path)
    assert reads == [path, path]  # the last one from the cache
    # Also the plain way: build (random values), then assign.
    state = READ_STATE_DICT(path)
    plain = keras_sam.SAM.from_config_dicts(
        **checkpoint.detect_architecture(state)
    )
    plain.build()
    plain.load_state_dict(state)
    for model in (cached, plain):
        assert [_below(v) for v in model.weights] == [
            _below(v) for v in fresh.weights
        ]
        for a, b in zip(model.weights, fresh.weights, strict=True):
            np.testing.assert_array_equal(
                keras.ops.convert_to_numpy(a),
                keras.ops.convert_to_numpy(b),
                err_msg=a.path,
            )


def _below(variable) -> str:
    return variable.path.split("/", 1)[1]  # below the model's own name


def test_a_new_file_at_the_same_path_is_read(tmp_path, reads, states):
    path = save(states[0], tmp_path / "sam.pth")
    cache.read_checkpoint(path)
    old = path.stat()
    time.sleep(0.05)  # past the file system's time step
    save(states[1], tmp_path / "new.pth").replace(path)
    # Same size, and the old modification time put back.
    assert path.stat().st_size == old.st_size
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert_same_arrays(cache.read_checkpoint(path), READ_STATE_DICT(path))
    assert len(reads) == 2
    # Both contents are cached now; the first one comes back from it
    # (the same bytes: torch.save names the archive after the file).
    (tmp_path / "again").mkdir()
    save(states[0], tmp_path / "again" / "sam.pth").replace(path)
    assert_same_arrays(cache.read_checkpoint(path), READ_STATE_DICT(path))
    assert len(reads) == 2


def test_a_file_rewritten_in_place_is_read(tmp_path, reads, states):
    path = save(states[0], tmp_path / "sam.pth")
    # (torch.save names the archive after the file: same length, same size)
    other = save(states[1], tmp_path / "oth.pth").read_bytes()
    cache.read_checkpoint(path)
    old = path.stat()
    assert len(other) == old.st_size
    time.sleep(0.05)
    with open(path, "r+b") as f:  # the same inode, the same size
        f.write(other)
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))
    assert path.stat().st_ino == old.st_ino
    assert path.stat().st_mtime_ns == old.st_mtime_ns
    assert_same_arrays(cache.read_checkpoint(path), READ_STATE_DICT(path))
    assert len(reads) == 2


def test_a_recently_changed_file_is_not_cached(
    tmp_path, folder, reads, states, monkeypatch
):
    monkeypatch.setattr(cache, "RACY_SECONDS", 3600.0)
    path = save(states[0], tmp_path / "sam.pth")
    cache.read_checkpoint(path)
    cache.read_checkpoint(path)
    assert len(reads) == 2
    assert entries(folder) == []


def test_a_file_changing_while_read_is_not_cached(
    tmp_path, folder, states, monkeypatch
):
    path = save(states[0], tmp_path / "sam.pth")

    def read_then_change(p):
        state = READ_STATE_DICT(p)
        time.sleep(0.05)
        save(states[1], path)  # the file changes after it was read
        return state

    monkeypatch.setattr(checkpoint, "read_state_dict", read_then_change)
    cache.read_checkpoint(path)
    assert entries(folder) == []
    monkeypatch.setattr(checkpoint, "read_state_dict", READ_STATE_DICT)
    assert_same_arrays(cache.read_checkpoint(path), READ_STATE_DICT(path))


def _flip_data_byte(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0x40
    entry.write_bytes(bytes(data))


def _truncate(entry: Path) -> None:
    entry.write_bytes(entry.read_bytes()[:-100])


def _bad_header(entry: Path) -> None:
    data = bytearray(entry.read_bytes())
    data[:8] = (1 << 40).to_bytes(8, "little")
    entry.write_bytes(bytes(data))


def _rewrite_header(entry: Path, edit) -> None:
    data = entry.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    entry.write_bytes(
        len(text).to_bytes(8, "little") + text + data[8 + length :]
    )


def _swap_two_tensors(entry: Path) -> None:
    def edit(header):
        by_shape = {}
        for key, spec in header.items():
            if key != "__metadata__":
                by_shape.setdefault(str(spec["shape"]), []).append(key)
        a, b = next(keys for keys in by_shape.values() if len(keys) > 1)[:2]
        header[a], header[b] = header[b], header[a]

    _rewrite_header(entry, edit)


def _other_source(entry: Path) -> None:
    def edit(header):
        header["__metadata__"]["source_sha256"] = "0" * 64

    _rewrite_header(entry, edit)


def _empty(entry: Path) -> None:
    entry.write_bytes(b"")


@pytest.mark.parametrize(
    "damage",
    [
        _flip_data_byte,
        _truncate,
        _bad_header,
        _swap_two_tensors,
        _other_source,
        _empty,
    ],
)
def test_a_damaged_entry_is_rebuilt(tmp_path, folder, reads, states, damage):
    path = save(states[0], tmp_path / "sam.pth")
    expected = READ_STATE_DICT(path)
    cache.read_checkpoint(path)
    (entry,) = entries(folder)
    damage(entry)
    assert_same_arrays(cache.read_checkpoint(path), expected)
    assert len(reads) == 2  # read from the file again
    assert entries(folder) == [entry]  # and stored again
    assert_same_arrays(cache.read_checkpoint(path), expected)
    assert len(reads) == 2  # the new entry verifies


def test_an_entry_is_used_while_its_data_are_checked(tmp_path, folder, states):
    path = save(states[0], tmp_path / "sam.pth")
    expected = READ_STATE_DICT(path)
    cache.read_checkpoint(path)
    opened = cache.open_checkpoint(path)
    assert_same_arrays(opened.state, expected)  # before the check ended
    opened.verified()
    assert opened.result(len) == len(expected)
    (entry,) = entries(folder)
    _flip_data_byte(entry)
    opened = cache.open_checkpoint(path)  # the header passes its checks
    with pytest.raises(cache.StaleEntry):
        opened.verified()
    assert entries(folder) == []  # the stale entry is gone


def test_what_is_made_from_a_stale_entry_is_made_again(
    tmp_path, folder, reads, states
):
    path = save(states[0], tmp_path / "sam.pth")
    expected = READ_STATE_DICT(path)
    cache.read_checkpoint(path)
    (entry,) = entries(folder)
    _flip_data_byte(entry)
    made = []

    def make(state):  # fails on the damaged arrays, as a build could
        made.append(state)
        if len(made) == 1:
            raise ValueError("nonsense weights")
        return state

    got = cache.open_checkpoint(path).result(make)
    assert len(made) == 2
    assert_same_arrays(got, expected)
    assert len(reads) == 2  # the second from the file, stored again
    assert entries(folder) == [entry]
    # An error on data that verify is the caller's own.
    with pytest.raises(ValueError, match="own"):
        cache.open_checkpoint(path).result(
            lambda state: (_ for _ in ()).throw(ValueError("own"))
        )


def test_from_checkpoint_with_a_damaged_entry_loads_the_file(
    tmp_path, folder, reads, states
):
    path = save(states[0], tmp_path / "sam.pth")
    fresh = keras_sam.SAM.from_checkpoint(path, use_cache=False)
    keras_sam.SAM.from_checkpoint(path)  # stores it
    (entry,) = entries(folder)
    _flip_data_byte(entry)
    model = keras_sam.SAM.from_checkpoint(path)
    assert len(reads) == 3  # read from the file again
    assert entries(folder) == [entry]  # and stored again
    for a, b in zip(model.weights, fresh.weights, strict=True):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a),
            keras.ops.convert_to_numpy(b),
            err_msg=a.path,
        )


@pytest.mark.parametrize("how", ["variable", "argument"])
def test_turned_off_nothing_is_written(
    tmp_path, folder, reads, states, monkeypatch, how
):
    path = save(states[0], tmp_path / "sam.pth")
    if how == "variable":
        monkeypatch.setenv(cache.DISABLE_VARIABLE, "1")
        assert not cache.enabled()
        read = cache.read_checkpoint
    else:
        assert cache.enabled()

        def read(p):
            return cache.read_checkpoint(p, use_cache=False)

    for _ in range(2):
        assert_same_arrays(read(path), READ_STATE_DICT(path))
    assert len(reads) == 2
    assert not folder.exists()


@pytest.mark.parametrize("value", ["", "0"])
def test_empty_or_zero_leaves_it_on(monkeypatch, value):
    monkeypatch.setenv(cache.DISABLE_VARIABLE, value)
    assert cache.enabled()


def test_from_checkpoint_use_cache_false_writes_nothing(
    tmp_path, folder, states
):
    path = save(states[0], tmp_path / "sam.pth")
    keras_sam.SAM.from_checkpoint(path, use_cache=False)
    assert not folder.exists()


def test_safetensors_files_are_read_directly(tmp_path, folder, reads, states):
    path = tmp_path / "sam.safetensors"
    checkpoint.write_safetensors(states[0], path)
    cache.read_checkpoint(path)
    cache.read_checkpoint(path)
    assert len(reads) == 2
    assert not folder.exists()


def test_an_unwritable_cache_warns_and_reads(tmp_path, monkeypatch, states):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("KERAS_SAM_CACHE", str(blocker))
    path = save(states[0], tmp_path / "sam.pth")
    with pytest.warns(RuntimeWarning, match="KERAS_SAM_NO_CACHE"):
        state = cache.read_checkpoint(path)
    assert_same_arrays(state, READ_STATE_DICT(path))


def test_least_recently_used_entries_go_beyond_the_limit(
    tmp_path, folder, reads, states, monkeypatch
):
    first = save(states[0], tmp_path / "first.pth")
    second = save(states[1], tmp_path / "second.pth")
    cache.read_checkpoint(first)
    size = entries(folder)[0].stat().st_size
    monkeypatch.setattr(cache, "MAX_BYTES", size)  # room for one
    cache.read_checkpoint(second)
    assert len(entries(folder)) == 1
    assert len(list((folder / "sources").glob("*.json"))) == 1
    assert_same_arrays(cache.read_checkpoint(second), READ_STATE_DICT(second))
    assert len(reads) == 2
    cache.read_checkpoint(first)  # evicted: read from the file
    assert len(reads) == 3
    monkeypatch.setattr(cache, "MAX_BYTES", 2 * size)
    cache.read_checkpoint(second)  # kept while both fit
    cache.read_checkpoint(first)
    assert len(reads) == 4
    assert len(entries(folder)) == 2


def test_info_and_clear(tmp_path, folder, reads, states):
    path = save(states[0], tmp_path / "sam.pth")
    cache.read_checkpoint(path)
    info = cache.info()
    assert info["enabled"] and info["checkpoints"] == str(folder)
    assert len(info["entries"]) == 1
    assert info["checkpoint_bytes"] == entries(folder)[0].stat().st_size
    assert cache.clear() >= info["checkpoint_bytes"]
    assert entries(folder) == []
    assert cache.info()["checkpoint_bytes"] == 0
    cache.read_checkpoint(path)
    assert len(reads) == 2


def _digest(state: dict) -> str:
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


CHILD = textwrap.dedent(
    """
    import hashlib, sys
    import numpy as np
    from keras_sam.convert import cache
    cache.RACY_SECONDS = 0.0
    state = cache.read_checkpoint(sys.argv[1])
    digest = hashlib.sha256()
    for key, value in state.items():
        digest.update(key.encode())
        digest.update(str(value.dtype).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    print(digest.hexdigest())
    """
)


def test_concurrent_processes(tmp_path, folder, reads, states):
    path = save(states[0], tmp_path / "sam.pth")
    expected = _digest(READ_STATE_DICT(path))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(2):  # an empty cache, then a full one
        children = [
            subprocess.Popen(
                [sys.executable, "-c", CHILD, str(path)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, err
            assert out.strip() == expected
        # Complete files only: one entry, no temporary file left.
        files = sorted(p.name for p in folder.iterdir() if p.is_file())
        assert files == sorted([".lock", entries(folder)[0].name])
    assert _digest(cache.read_checkpoint(path)) == expected
    assert reads == []  # from the entry the children wrote


def test_a_folder_others_can_write_in_is_not_used(
    tmp_path, folder, reads, states
):
    path = save(states[0], tmp_path / "sam.pth")
    cache.read_checkpoint(path)
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)
    with pytest.warns(RuntimeWarning, match="other users can write"):
        state = cache.read_checkpoint(path)
    assert_same_arrays(state, READ_STATE_DICT(path))
    assert len(reads) == 2
