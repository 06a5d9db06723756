"""Pictures of masks, prompts and scores drawn over an image (Pillow)."""

import numpy as np

# Distinct, colour-blind-friendly colours (Okabe-Ito, then Tableau).
PALETTE = (
    (0, 114, 178),
    (230, 159, 0),
    (0, 158, 115),
    (204, 121, 167),
    (86, 180, 233),
    (213, 94, 0),
    (240, 228, 66),
    (148, 103, 189),
    (140, 86, 75),
    (127, 127, 127),
)
FOREGROUND = (40, 220, 60)
BACKGROUND = (235, 40, 40)


def color(i: int) -> tuple[int, int, int]:
    """The i-th mask colour; beyond the palette, a golden-ratio hue walk."""
    if i < len(PALETTE):
        return PALETTE[i]
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(255 * r), int(255 * g), int(255 * b)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of `mask` with a 4-neighbour outside it."""
    padded = np.pad(mask, 1)
    inner = (
        padded[:-2, 1:-1]
        & padded[2:, 1:-1]
        & padded[1:-1, :-2]
        & padded[1:-1, 2:]
    )
    edge = mask & ~inner
    # Thicken to 2 px so outlines stay visible on large images.
    thick = edge.copy()
    thick[1:] |= edge[:-1]
    thick[:, 1:] |= edge[:, :-1]
    return thick


def overlay(
    image: np.ndarray,
    masks,
    *,
    scores=None,
    labels=None,
    points=None,
    point_labels=None,
    boxes=None,
    alpha: float = 0.45,
    legend: bool = True,
) -> np.ndarray:
    """Draw masks (filled + outlined), points, boxes and a score legend.

    Args:
        image: uint8 `(H, W, 3)` RGB.
        masks: `(N, H, W)` booleans (or a list of them).
        scores: optional `(N,)` numbers shown in the legend.
        labels: optional `(N,)` strings for the legend (default "mask i").
        points: optional `(P, 2)` x, y pixels.
        point_labels: optional `(P,)`: 1 drawn green (foreground), 0 red.
        boxes: optional `(M, 4)` x1, y1, x2, y2 pixels.
        alpha: mask opacity.
        legend: add a legend panel (colour, name, score per mask) to the
            right of the image.

    Returns:
        uint8 RGB picture: `(H, W, 3)` without legend; with it, wider (the
        panel) and at least as tall as the legend.
    """
    from PIL import Image
    from PIL import ImageDraw

    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            "`image` must be uint8 (H, W, 3). Received: "
            f"image.dtype={image.dtype}, image.shape={image.shape}"
        )
    masks = [np.asarray(m, bool) for m in masks]
    for m in masks:
        if m.shape != image.shape[:2]:
            raise ValueError(
                f"`masks` must each have the image size {image.shape[:2]}. "
                f"Received: a mask of shape {m.shape}"
            )
    canvas = image.astype(np.float32)
    # Larger masks first, so that small ones stay visible on top.
    order = sorted(range(len(masks)), key=lambda i: -int(masks[i].sum()))
    for i in order:
        rgb = np.asarray(color(i), np.float32)
        m = masks[i]
        canvas[m] = (1 - alpha) * canvas[m] + alpha * rgb
    for i in order:
        canvas[_outline(masks[i])] = color(i)
    picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    size = max(image.shape[:2])
    r = max(4, size // 120)
    width = max(2, size // 400)
    if boxes is not None:
        for box in np.asarray(boxes, np.float64).reshape(-1, 4):
            draw.rectangle(
                box.tolist(), outline=(255, 255, 255), width=width + 1
            )
            draw.rectangle(
                box.tolist(), outline=(20, 20, 20), width=max(1, width // 2)
            )
    if points is not None:
        pts = np.asarray(points, np.float64).reshape(-1, 2)
        lab = (
            np.ones(len(pts))
            if point_labels is None
            else np.asarray(point_labels).reshape(-1)
        )
        for (x, y), lbl in zip(pts, lab, strict=True):
            fill = FOREGROUND if lbl == 1 else BACKGROUND
            draw.ellipse(
                (x - r, y - r, x + r, y + r),
                fill=fill,
                outline=(255, 255, 255),
                width=max(1, width // 2 + 1),
            )
    if legend and masks:
        picture = _with_legend(picture, len(masks), scores, labels)
    return np.asarray(picture)


def _with_legend(picture, count: int, scores, labels):
    """The picture with a legend panel on its right: one line per mask
    (colour swatch, name, score), never covering the image."""
    from PIL import Image
    from PIL import ImageDraw

    lines = []
    for i in range(count):
        text = labels[i] if labels is not None else f"mask {i}"
        if scores is not None:
            text += f"  {float(scores[i]):.3f}"
        lines.append(text)
    line_h, pad = 14, 6
    width = pad * 3 + 12 + 6 * max(len(t) for t in lines)
    height = max(picture.height, pad * 2 + line_h * count)
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = picture.width + pad
    for i, text in enumerate(lines):
        y = pad + i * line_h
        draw.rectangle((x0, y + 1, x0 + 10, y + 11), fill=color(i))
        draw.text((x0 + 16, y), text, fill=(0, 0, 0))
    return canvas
