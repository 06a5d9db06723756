"""Picture reading and atomic output writing (`keras_sam.io`)."""

import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from keras_sam import io


def test_write_png_round_trip_leaves_no_temporary_file(tmp_path):
    picture = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    path = tmp_path / "o.png"
    io.write_png(picture, path)
    np.testing.assert_array_equal(io.read_image(path), picture)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.png"]


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "o.json"
    io.write_json({"a": 1}, path)
    with pytest.raises(TypeError):
        io.write_json({"a": object()}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.json"]


def test_jsonable_converts_numpy_values():
    value = {"a": np.arange(3), "b": (np.float32(0.5), [np.int64(2)])}
    assert io.jsonable(value) == {"a": [0, 1, 2], "b": [0.5, [2]]}


def test_read_image_converts_to_rgb_and_refuses_non_pictures(tmp_path):
    Image.new("L", (5, 3), 7).save(tmp_path / "g.png")
    image = io.read_image(tmp_path / "g.png")
    assert image.shape == (3, 5, 3) and image.dtype == np.uint8
    (tmp_path / "t.png").write_text("not a picture")
    with pytest.raises(ValueError, match="cannot read"):
        io.read_image(tmp_path / "t.png")


def test_collect_images_lists_folders_in_order(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    found = io.collect_images([str(tmp_path)])
    assert [p.rsplit("/", 1)[1] for p in found] == ["a.jpg", "b.png"]
    with pytest.raises(ValueError, match="no such file"):
        io.collect_images([str(tmp_path / "missing")])


# Picture reading: every case below writes its picture with Pillow (or, for
# what Pillow cannot write, by hand) and compares the read with a NumPy
# formula.

RNG = np.random.default_rng(0)


def _png(path, width, height, bit_depth, colour_type, pixels=None):
    """A PNG written by hand (Pillow writes no 16-bit colour PNG): `pixels`
    (H, W[, C]) stored big-endian at `bit_depth`, or, when None, a header
    declaring `width` x `height` over a few bytes of data."""
    if pixels is None:
        raw = zlib.compress(b"\0" * 64)
    else:
        rows = pixels.reshape(height, -1).astype(f">u{bit_depth // 8}")
        raw = zlib.compress(b"".join(b"\0" + row.tobytes() for row in rows))

    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(
        ">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0
    )
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )
    return path


def _grey(values):
    return np.repeat(values[..., None], 3, axis=-1)


def _stretched(values):
    values = values.astype(np.float64)
    scaled = (values - values.min()) / (values.max() - values.min())
    return np.rint(scaled * 255).astype(np.uint8)


# Where the stored rows and columns go on screen, per EXIF orientation
# (the tag's definition), independent of Pillow's transposes.
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


def test_jpeg_exif_orientation_6_reads_as_viewers_show_it(tmp_path):
    stored = np.zeros((32, 48, 3), np.uint8)
    stored[:8, :8] = 255  # a bright square in the stored top-left corner
    plain = Image.fromarray(stored)
    exif = plain.getexif()
    exif[0x0112] = 6
    plain.save(tmp_path / "plain.jpg", quality=95)
    plain.save(tmp_path / "turned.jpg", quality=95, exif=exif)
    shown = io.read_image(tmp_path / "turned.jpg")
    # Orientation 6: rotate 90 degrees clockwise to view; the same JPEG
    # data without the tag decodes to the same stored pixels.
    assert shown.shape == (48, 32, 3)
    np.testing.assert_array_equal(
        shown, np.rot90(io.read_image(tmp_path / "plain.jpg"), -1)
    )
    assert shown[:8, -8:].min() > 200 and shown[:, :-8].max() < 60


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_every_exif_orientation_is_applied(tmp_path, orientation):
    stored = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    picture = Image.fromarray(stored)
    exif = picture.getexif()
    exif[0x0112] = orientation
    picture.save(tmp_path / "o.png", exif=exif)
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "o.png"), ORIENTED[orientation](stored)
    )


@pytest.mark.parametrize(
    "suffix,dtype", [(".png", "<u2"), (".tif", "<u2"), (".tif", ">u2")]
)
def test_16_bit_grey_reads_as_its_8_bit_version(tmp_path, suffix, dtype):
    eight = RNG.integers(0, 256, (6, 9), dtype=np.uint8)
    eight[0, :2] = 0, 255
    sixteen = (eight.astype(np.uint16) * 257).astype(dtype)
    picture = Image.fromarray(sixteen)
    assert picture.mode == {"<u2": "I;16", ">u2": "I;16B"}[dtype]
    picture.save(tmp_path / f"g{suffix}")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / f"g{suffix}"), _grey(eight)
    )


def test_16_bit_grey_keeps_the_high_byte_as_pillow_does_for_colour(tmp_path):
    values = RNG.integers(0, 65536, (5, 6), dtype=np.uint16)
    values[0, :3] = 0, 256, 65535
    Image.fromarray(values).save(tmp_path / "grey.png")
    _png(tmp_path / "rgb.png", 6, 5, 16, 2, _grey(values))
    grey = io.read_image(tmp_path / "grey.png")
    np.testing.assert_array_equal(grey, _grey(values >> 8))
    np.testing.assert_array_equal(io.read_image(tmp_path / "rgb.png"), grey)


@pytest.mark.parametrize("colour_type,channels", [(2, 3), (6, 4), (4, 2)])
def test_16_bit_colour_and_alpha_pngs_keep_the_high_byte(
    tmp_path, colour_type, channels
):
    values = RNG.integers(0, 65536, (4, 5, channels), dtype=np.uint16)
    _png(tmp_path / "c.png", 5, 4, 16, colour_type, values)
    colour = values[..., :3] if channels > 2 else _grey(values[..., 0])
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "c.png"), (colour >> 8).astype(np.uint8)
    )


def test_32_bit_integers_read_as_16_bit_or_stretched(tmp_path):
    values = RNG.integers(0, 65536, (4, 5)).astype(np.int32)
    Image.fromarray(values).save(tmp_path / "i.tif")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "i.tif"), _grey(values >> 8)
    )
    values[0, 0] = -70000
    Image.fromarray(values).save(tmp_path / "signed.tif")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "signed.tif"), _grey(_stretched(values))
    )


def test_float_pictures_in_0_1_scale_by_255_others_stretch(tmp_path):
    unit = RNG.random((4, 6)).astype(np.float32)
    unit[0, :2] = 0, 1
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "unit.tif"),
        _grey(np.rint(unit.astype(np.float64) * 255).astype(np.uint8)),
    )
    wide = (unit * 500 - 100).astype(np.float32)
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "wide.tif"), _grey(_stretched(wide))
    )
    wide[1, 1], wide[2, 2] = np.nan, np.inf  # read as 0, ignored for range
    Image.fromarray(wide).save(tmp_path / "nan.tif")
    expected = _stretched(np.where(np.isfinite(wide), wide, wide[0, 0]))
    expected[1, 1] = expected[2, 2] = 0
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "nan.tif"), _grey(expected)
    )
    Image.fromarray(np.full((2, 3), 7, np.float32)).save(tmp_path / "c.tif")
    assert not io.read_image(tmp_path / "c.tif").any()


def _palette_picture():
    palette = RNG.integers(0, 256, (256, 3), dtype=np.uint8)
    indices = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
    picture = Image.fromarray(indices, "P")
    picture.putpalette(palette.tobytes())
    return picture, palette[indices]


@pytest.mark.parametrize("transparency", [None, 3, bytes(range(256))])
def test_palette_pictures_read_their_colours(tmp_path, transparency):
    picture, expected = _palette_picture()
    options = {} if transparency is None else {"transparency": transparency}
    picture.save(tmp_path / "p.png", **options)
    with Image.open(tmp_path / "p.png") as saved:
        assert saved.mode == "P"
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png"), expected)


def test_palette_with_alpha_drops_the_alpha(tmp_path):
    picture, expected = _palette_picture()
    picture.convert("PA").save(tmp_path / "pa.tif")
    with Image.open(tmp_path / "pa.tif") as saved:
        assert saved.mode == "PA"
    np.testing.assert_array_equal(io.read_image(tmp_path / "pa.tif"), expected)


@pytest.mark.parametrize("mode", ["LA", "RGBA"])
def test_alpha_is_dropped_keeping_the_colour_under_it(tmp_path, mode):
    channels = len(mode)
    values = RNG.integers(0, 256, (4, 6, channels), dtype=np.uint8)
    values[..., -1] = 0  # fully transparent: the stored colour still reads
    values[0, 0, -1] = 255
    Image.fromarray(values, mode).save(tmp_path / "a.png")
    colour = values[..., :3] if mode == "RGBA" else _grey(values[..., 0])
    np.testing.assert_array_equal(io.read_image(tmp_path / "a.png"), colour)


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".gif"])
def test_bilevel_pictures_read_as_0_and_255(tmp_path, suffix):
    bits = RNG.random((5, 11)) > 0.5
    Image.fromarray(bits).save(tmp_path / f"b{suffix}")
    np.testing.assert_array_equal(
        io.read_image(tmp_path / f"b{suffix}"), _grey(bits * np.uint8(255))
    )


def _cmyk_to_rgb(cmyk):
    # Pillow's conversion, without an ICC profile: (255 - c)(255 - k) / 255.
    cmyk = cmyk.astype(np.float64)
    return np.rint((255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255)


def test_cmyk_tiff_and_jpeg(tmp_path):
    cmyk = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.tif")
    np.testing.assert_allclose(
        io.read_image(tmp_path / "c.tif"), _cmyk_to_rgb(cmyk), atol=1
    )
    # JPEG is lossy: flat 8x8 blocks of one colour each come back within a
    # few levels (Pillow writes and reads Adobe's inverted CMYK).
    blocks = np.kron(cmyk[:2, :2], np.ones((8, 8, 1), np.uint8))
    Image.fromarray(blocks, "CMYK").save(tmp_path / "c.jpg", quality=100)
    with Image.open(tmp_path / "c.jpg") as saved:
        assert saved.mode == "CMYK"
    np.testing.assert_allclose(
        io.read_image(tmp_path / "c.jpg"), _cmyk_to_rgb(blocks), atol=3
    )


def test_ycbcr_tiff(tmp_path):
    ycbcr = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(ycbcr, "YCbCr").save(tmp_path / "y.tif")
    y, cb, cr = np.moveaxis(ycbcr.astype(np.float64) - [0, 128, 128], -1, 0)
    rgb = np.stack(  # JFIF's full-range conversion
        [
            y + 1.402 * cr,
            y - 0.344136 * cb - 0.714136 * cr,
            y + 1.772 * cb,
        ],
        axis=-1,
    )
    np.testing.assert_allclose(
        io.read_image(tmp_path / "y.tif"), np.rint(rgb).clip(0, 255), atol=1
    )


def test_lab_tiff_greys(tmp_path):
    lightness = np.array([[0, 30, 60, 128, 200, 255]], np.uint8)
    neutral = Image.new("L", (6, 1), 128)  # Pillow stores a*, b* + 128
    lab = Image.merge("LAB", [Image.fromarray(lightness), neutral, neutral])
    lab.save(tmp_path / "lab.tif")
    # CIE L* to luminance, then the sRGB curve.
    star = lightness / 255 * 100
    luminance = np.where(star > 8, ((star + 16) / 116) ** 3, star / 903.3)
    srgb = np.where(
        luminance <= 0.0031308,
        12.92 * luminance,
        1.055 * luminance ** (1 / 2.4) - 0.055,
    )
    np.testing.assert_allclose(
        io.read_image(tmp_path / "lab.tif"),
        _grey(np.rint(srgb * 255)),
        atol=1,
    )


@pytest.mark.parametrize(
    "suffix,options",
    [
        (".png", {}),
        (".tif", {}),
        (".tif", {"compression": "tiff_lzw"}),
        (".webp", {"lossless": True}),
        (".bmp", {}),
    ],
)
def test_lossless_formats_round_trip(tmp_path, suffix, options):
    picture = RNG.integers(0, 256, (7, 10, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / f"r{suffix}", **options)
    np.testing.assert_array_equal(
        io.read_image(tmp_path / f"r{suffix}"), picture
    )


@pytest.mark.parametrize("suffix", [".gif", ".tif", ".webp", ".png"])
def test_animated_and_multi_page_files_read_their_first_frame(tmp_path, suffix):
    first = np.zeros((6, 8, 3), np.uint8)
    first[:, :4, 0] = 255  # red left, blue right
    first[:, 4:, 2] = 255
    later = [np.full((6, 8, 3), c, np.uint8) for c in [(0, 255, 0), 255]]
    frames = [Image.fromarray(f) for f in [first, *later]]
    options = {"lossless": True} if suffix == ".webp" else {}
    frames[0].save(
        tmp_path / f"a{suffix}",
        save_all=True,
        append_images=frames[1:],
        **options,
    )
    with Image.open(tmp_path / f"a{suffix}") as saved:
        assert saved.n_frames == 3
    np.testing.assert_array_equal(io.read_image(tmp_path / f"a{suffix}"), first)


def test_extreme_aspect_ratios_read(tmp_path):
    for shape in [(1, 3000), (3000, 1)]:
        picture = RNG.integers(0, 256, (*shape, 3), dtype=np.uint8)
        Image.fromarray(picture).save(tmp_path / "thin.png")
        np.testing.assert_array_equal(
            io.read_image(tmp_path / "thin.png"), picture
        )


def test_the_array_read_is_a_writable_copy(tmp_path):
    Image.new("RGB", (3, 2), (1, 2, 3)).save(tmp_path / "w.png")
    image = io.read_image(tmp_path / "w.png")
    image[0, 0] = 9
    assert image.flags.writeable and image.flags.c_contiguous


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    # 20000 x 20000 pixels declared over a few bytes of data: decoding them
    # would fail ("cannot read"), so refusing shows nothing was decoded.
    bomb = _png(tmp_path / "bomb.png", 20000, 20000, 1, 0)
    with pytest.raises(ValueError, match=r"refusing .*bomb\.png .*bomb") as e:
        io.read_image(bomb)
    assert "400000000 pixels" in str(e.value)
    assert str(io.MAX_PIXELS) in str(e.value)


def test_max_pixels_refuses_before_pillows_limit_and_warns_nothing(tmp_path):
    # 10000 x 10000 is over Pillow's warning size (`filterwarnings = error`
    # would turn an escaped warning into a failure) but under its limit.
    big = _png(tmp_path / "big.png", 10000, 10000, 1, 0)
    with pytest.raises(
        ValueError,
        match=r"refusing .*big\.png .*10000x10000 = 100000000 pixels, more "
        r"than max_pixels=50000000",
    ):
        io.read_image(big, max_pixels=50_000_000)
    picture = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small\.png.*max_pixels=19"):
        io.read_image(tmp_path / "small.png", max_pixels=19)
    np.testing.assert_array_equal(
        io.read_image(tmp_path / "small.png", max_pixels=20), picture
    )
    with pytest.raises(ValueError, match="max_pixels=0"):
        io.read_image(tmp_path / "small.png", max_pixels=0)


def test_pillows_size_warning_does_not_escape(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # warns above 10
    picture = RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "p.png"), picture)


FORMATS = [".png", ".jpg", ".tif", ".webp", ".bmp", ".gif"]


@pytest.mark.parametrize("suffix", FORMATS)
def test_truncated_files_are_refused_naming_the_file(tmp_path, suffix):
    picture = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / f"whole{suffix}")
    data = (tmp_path / f"whole{suffix}").read_bytes()
    for length in [0, 10, len(data) // 2, len(data) - 200]:
        path = tmp_path / f"cut{length}{suffix}"
        path.write_bytes(data[:length])
        with pytest.raises(ValueError, match=f"cannot read .*{path.name}"):
            io.read_image(path)
        with pytest.raises(ValueError, match=f"cannot read {path.name}"):
            io.read_image_bytes(data[:length], name=path.name)


def test_missing_files_and_folders_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"missing\.png .*No such file"):
        io.read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match=f"cannot read {tmp_path}"):
        io.read_image(tmp_path)


@pytest.mark.parametrize("suffix", FORMATS)
def test_damaged_files_read_or_raise_value_error(tmp_path, suffix):
    picture = RNG.integers(0, 256, (16, 20, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / f"d{suffix}")
    data = (tmp_path / f"d{suffix}").read_bytes()
    rng = np.random.default_rng(len(data))
    for _ in range(40):
        damaged = bytearray(data)
        for _ in range(3):  # headers are where damage misleads most
            damaged[rng.integers(0, min(len(data), 200))] = rng.integers(256)
        try:
            # A damaged header may declare any size: keep the test small.
            image = io.read_image_bytes(bytes(damaged), max_pixels=10**5)
        except ValueError as e:
            assert "upload" in str(e)
        else:
            assert image.dtype == np.uint8 and image.shape[2] == 3


def test_read_image_bytes_matches_read_image(tmp_path):
    picture = RNG.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "b.png")
    data = (tmp_path / "b.png").read_bytes()
    np.testing.assert_array_equal(io.read_image_bytes(data), picture)
    with pytest.raises(ValueError, match="cannot read upload as an image"):
        io.read_image_bytes(b"not a picture")
    with pytest.raises(ValueError, match="refusing photo.png"):
        io.read_image_bytes(data, "photo.png", max_pixels=10)


# Output writing: all or none, the umask, leftovers; finding pictures.


def test_output_group_writes_all_files_or_none(tmp_path):
    (tmp_path / "b.json").write_text("old")
    with pytest.raises(TypeError):
        with io.output_group() as group:
            io.write_png(np.zeros((2, 2), np.uint8), tmp_path / "a.png", group)
            io.write_json({"x": object()}, tmp_path / "b.json", group)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]
    assert (tmp_path / "b.json").read_text() == "old"
    # A folder in the way of one file: none is renamed.
    (tmp_path / "c.json").mkdir()
    with pytest.raises(IsADirectoryError, match="c.json"):
        with io.output_group() as group:
            io.write_json({"a": 1}, tmp_path / "b.json", group)
            io.write_json({"a": 1}, tmp_path / "c.json", group)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json", "c.json"]
    assert (tmp_path / "b.json").read_text() == "old"
    with io.output_group() as group:
        io.write_json({"a": 1}, tmp_path / "b.json", group)
        io.write_json({"a": 2}, tmp_path / "d.json", group)
    assert json.loads((tmp_path / "d.json").read_text()) == {"a": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "b.json",
        "c.json",
        "d.json",
    ]


def test_outputs_get_the_umask_mode(tmp_path):
    import os
    import stat

    old = os.umask(0o027)
    try:
        io.write_json({}, tmp_path / "a.json")
        with io.output_group() as group, group.path(tmp_path / "b.bin") as p:
            with open(p, "wb") as f:
                f.write(b"by name")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640
    assert io.file_mode() == 0o666 & ~old


def test_remove_leftovers_removes_only_dead_writers_temporaries(tmp_path):
    import os

    dead = tmp_path / ".a.json.99999999.abcdefgh.part"
    alive = tmp_path / f".b.json.{os.getpid()}.abcdefgh.part"
    h5 = tmp_path / ".x.weights.h5.99999999.k2_x9aaa.part.weights.h5"
    for path in (dead, alive, h5, tmp_path / "mine.part", tmp_path / ".part"):
        path.write_text("")
    removed = io.remove_leftovers(tmp_path)
    assert sorted(removed) == sorted([str(dead), str(h5)])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [alive.name, "mine.part", ".part"]
    )


def test_scan_images_says_what_it_passed_over(tmp_path):
    for name in ("b.png", "a.GIF", "notes.txt", ".hidden.png", "sub/c.jpg"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "sub")
    folder = str(tmp_path)
    images, skipped = io.scan_images([folder], exclude=(folder + "/out",))
    assert images == [f"{folder}/a.GIF", f"{folder}/b.png"]
    assert sorted(skipped) == sorted(
        [
            (f"{folder}/.hidden.png", io.SKIP_HIDDEN),
            (f"{folder}/link", io.SKIP_SUBFOLDER),
            (f"{folder}/notes.txt", io.SKIP_NOT_PICTURE),
            (f"{folder}/out", io.SKIP_EXCLUDED),
            (f"{folder}/sub", io.SKIP_SUBFOLDER),
        ]
    )
    images, skipped = io.scan_images(
        [folder, f"{folder}/b.png"], recursive=True
    )
    assert images == [
        f"{folder}/a.GIF",
        f"{folder}/b.png",
        f"{folder}/sub/c.jpg",
    ]
    assert (f"{folder}/link", io.SKIP_FOLDER_LINK) in skipped
    assert (f"{folder}/b.png", io.SKIP_DUPLICATE) in skipped


def test_mirrored_names_keep_every_picture_apart(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for folder in (a, b):
        (tmp_path / folder).mkdir()
    images = [f"{a}/x.jpg", f"{a}/x.png", f"{a}/s/x.png", f"{b}/x.png"]
    assert io.mirrored_names(images[:3], [a]) == ["x.jpg", "x.png", "s/x.png"]
    assert io.mirrored_names(images, [a, b]) == [
        "a/x.jpg",
        "a/x.png",
        "a/s/x.png",
        "b/x.png",
    ]
    assert io.mirrored_names([f"{a}/x.png"], [f"{a}/x.png"]) == ["x.png"]


# -- what the reader means for masks (the bundled model; one backend) -------


def _bundled_predictor():
    import keras_sam

    model = keras_sam.SAM.from_preset("sam_shapes", weights=True)
    return keras_sam.SAMPredictor(model)


def _scene():
    import keras_sam

    # A held-out, non-square picture: rotating it changes its shape.
    return keras_sam.datasets.make_scene(
        (10_000_000, 4242, 0, 1), image_size=(384, 512)
    )


@pytest.mark.integration
def test_phone_photo_is_segmented_where_the_viewer_clicks(tmp_path):
    """A JPEG stored sideways with EXIF orientation 6 (as phones write
    them): the click, in the coordinates of the picture the viewer shows,
    segments the object shown there."""
    from keras_sam.training.evaluation import interior_point
    from keras_sam.training.evaluation import mask_iou

    image, masks = _scene()
    stored = np.ascontiguousarray(np.rot90(image))  # orientation 6 shows it
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    with Image.open(path) as im:
        assert np.asarray(im.convert("RGB")).shape == stored.shape
    picture = io.read_image(path)
    assert picture.shape == image.shape
    target = masks[int(np.argmax([m.sum() for m in masks]))]
    point = interior_point(target)
    predictor = _bundled_predictor()
    best = []
    for shown in (picture, image):  # the phone's JPEG, the lossless original
        predictor.set_image(shown)
        found, scores, _ = predictor.predict(
            point_coords=point[None], point_labels=np.array([1])
        )
        best.append(found[int(np.argmax(scores))])
    # The same object as on the original picture (JPEG noise aside), and
    # the object under the click.
    assert mask_iou(best[0], best[1]) > 0.9
    assert mask_iou(best[0], target) > 0.6


@pytest.mark.integration
def test_16_bit_png_gives_the_masks_of_its_8_bit_version(tmp_path):
    image, masks = _scene()
    grey = image.mean(axis=-1).round().astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    with Image.open(tmp_path / "16.png") as im:
        assert im.mode.startswith("I")  # a real 16-bit file
    predictor = _bundled_predictor()
    box = np.array([376, 134, 511, 253])
    results = []
    for name in ("8.png", "16.png"):
        predictor.set_image(io.read_image(tmp_path / name))
        results.append(predictor.predict(box=box, multimask_output=False))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    assert results[0][0].any()
