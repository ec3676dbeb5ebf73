"""A tiny raster renderer for the TensorBoard panels: numpy only, no matplotlib, no font files.

The panels are drawn straight into an ``(H, W, 3)`` uint8 RGB array (:class:`Canvas`) with filled
rectangles (optionally alpha-blended), 1-px lines, discs, colour-mapped cells and text in an
embedded 5 x 7 bitmap font (upper case; lower case letters are drawn as upper case). Nothing is
cached between calls, so the training process keeps no renderer state (SPEC §8: the extra peak
memory of the callbacks must stay small; matplotlib's font and renderer caches cost ~20 MiB).

Coordinates are pixels: ``x`` is the column (0 at the left), ``y`` the row (0 at the top).
Everything drawn is clipped to the canvas.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "COLORMAPS",
    "GLYPH_H",
    "GLYPH_W",
    "Canvas",
    "colormap",
    "colorize",
    "glyph",
    "hex_to_rgb",
    "line_pixels",
    "resample_cells",
    "text_mask",
    "text_width",
]

# ------------------------------------------------------------------ colour maps

# 17 anchors at 0, 1/16, ..., 1 (sampled from the published maps), interpolated linearly to 256.
_ANCHORS = {
    "viridis": "44015448186a472d7b4240863b528b33638d2c728e26828e21918c1fa08828ae803fbc735ec96284d44baddc30d8e219fde725",
    "magma": "0000040a08221d114736106b51127c6a1c818326819c2e7fb73779d0416fe75263f56b5cfc8961fea772fec488fde2a3fcfdbf",
    "RdBu": "67001f960f27bb2a34d25849e58368f5ac8bfbceb7fbe6daf6f7f7deebf2c0dceb98c8e068abd03e8cbf2870b115508d053061",
    "Greys": "fffffff7f7f7f0f0f0e4e4e4d9d9d9cbcbcbbdbdbda9a9a99595958484847272726262625151513a3a3a242424111111000000",
}

#: Names accepted by :func:`colormap` (each also with a ``_r`` suffix, reversed). ``viridis`` and
#: ``magma`` are perceptually ordered sequential maps; ``RdBu_r`` is the diverging blue-white-red
#: map for signed values (zeta); ``Greys`` runs white to black.
COLORMAPS = tuple(_ANCHORS)


def hex_to_rgb(colour: Any) -> tuple[int, int, int]:
    """``"#1f77b4"`` (or an ``(r, g, b)`` of ints 0-255) to an ``(r, g, b)`` tuple of ints.

    Raises:
        ValueError: If ``colour`` is neither.

    Example::

        >>> hex_to_rgb("#1f77b4")
        (31, 119, 180)
    """
    if isinstance(colour, str):
        text = colour.lstrip("#")
        if len(text) == 6:
            try:
                return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]
            except ValueError:
                pass
    elif isinstance(colour, (tuple, list, np.ndarray)) and len(colour) == 3:
        rgb = tuple(int(c) for c in colour)
        if all(0 <= c <= 255 for c in rgb):
            return rgb  # type: ignore[return-value]
    raise ValueError(f"`colour` must be '#rrggbb' or an (r, g, b) of ints 0-255, got {colour!r}.")


def colormap(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 lookup table of a colour map.

    Each map is stored as 17 anchor colours at ``0, 1/16, ..., 1``; entry ``i`` of the table is the
    linear interpolation at ``i / 255`` (rounded).

    Args:
        name: One of :data:`COLORMAPS`, optionally with ``_r`` (reversed).

    Returns:
        ``(256, 3)`` uint8, entry 0 for the lowest value.

    Raises:
        ValueError: If ``name`` is unknown.

    Example::

        >>> lut = colormap("viridis")
        >>> lut.shape, lut[0].tolist(), lut[-1].tolist()
        ((256, 3), [68, 1, 84], [253, 231, 37])
    """
    base, reverse = (name[:-2], True) if isinstance(name, str) and name.endswith("_r") else (name, False)
    if base not in _ANCHORS:
        allowed = ", ".join(f"'{n}'" for n in COLORMAPS)
        raise ValueError(f"`cmap` must be one of {allowed} (optionally with '_r'), got {name!r}.")
    text = _ANCHORS[base]
    anchors = np.array([[int(text[i + j:i + j + 2], 16) for j in (0, 2, 4)] for i in range(0, len(text), 6)],
                       dtype=np.float64)  # (17, 3)
    pos = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(t, pos, anchors[:, k]) for k in range(3)], axis=1)  # (256, 3)
    lut = np.floor(lut + 0.5).astype(np.uint8)
    return lut[::-1].copy() if reverse else lut


def colorize(values: Any, vmin: float, vmax: float, cmap: str = "viridis",
             bad: Any = (187, 187, 187)) -> np.ndarray:
    r"""Map values to colours through a lookup table (linear scale, clipped to ``[vmin, vmax]``).

    .. math:: i = \mathrm{clip}\big(\lfloor 256\,(v - v_{\min}) / (v_{\max} - v_{\min}) \rfloor, 0, 255\big)

    Args:
        values: Array of any shape.
        vmin: Value of the first colour.
        vmax: Value of the last colour; ``vmax <= vmin`` maps everything finite to the middle colour.
        cmap: Colour map name (:func:`colormap`).
        bad: Colour of NaN / infinite values.

    Returns:
        ``values.shape + (3,)`` uint8.

    Example::

        >>> colorize([0.0, 1.0, float("nan")], 0.0, 1.0, "Greys").tolist()
        [[255, 255, 255], [0, 0, 0], [187, 187, 187]]
    """
    v = np.asarray(values, dtype=np.float64)
    lut = colormap(cmap)
    finite = np.isfinite(v)
    span = float(vmax) - float(vmin)
    if span > 0 and np.isfinite(span):
        with np.errstate(invalid="ignore", over="ignore"):
            idx = np.floor((np.where(finite, v, vmin) - vmin) / span * 256.0)
        idx = np.clip(idx, 0, 255).astype(np.intp)
    else:
        idx = np.full(v.shape, 128, dtype=np.intp)
    out = lut[idx]
    out[~finite] = hex_to_rgb(bad)
    return out


def resample_cells(cells: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resampling of an ``(R, C, ...)`` array of cells to ``(height, width, ...)``.

    Output row ``y`` shows cell row ``floor(y * R / height)`` (columns likewise): when ``height`` is a
    multiple of ``R`` every cell becomes an exact ``height / R``-pixel block; when smaller, cells are
    skipped (down-sampling).

    Raises:
        ValueError: If ``cells`` is empty or ``height``/``width`` are not positive.

    Example::

        >>> resample_cells(np.array([[1, 2], [3, 4]]), 4, 6)[:, :, ...].tolist()[0]
        [1, 1, 1, 2, 2, 2]
    """
    cells = np.asarray(cells)
    if cells.ndim < 2 or cells.shape[0] == 0 or cells.shape[1] == 0:
        raise ValueError(f"`cells` must be a non-empty array of at least 2 dims, got shape {cells.shape}.")
    if int(height) < 1 or int(width) < 1:
        raise ValueError(f"`height` and `width` must be positive, got {height!r} and {width!r}.")
    rows = (np.arange(int(height)) * cells.shape[0]) // int(height)  # (height,)
    cols = (np.arange(int(width)) * cells.shape[1]) // int(width)  # (width,)
    return cells[rows[:, None], cols[None, :]]


# ------------------------------------------------------------------ font

GLYPH_W, GLYPH_H = 5, 7
_GLYPHS = {
    " ": "..... ..... ..... ..... ..... ..... .....",
    "0": ".###. #...# #..## #.#.# ##..# #...# .###.",
    "1": "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    "2": ".###. #...# ....# ...#. ..#.. .#... #####",
    "3": "##### ...#. ..#.. ...#. ....# #...# .###.",
    "4": "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    "5": "##### #.... ####. ....# ....# #...# .###.",
    "6": "..##. .#... #.... ####. #...# #...# .###.",
    "7": "##### ....# ...#. ..#.. .#... .#... .#...",
    "8": ".###. #...# #...# .###. #...# #...# .###.",
    "9": ".###. #...# #...# .#### ....# ...#. .##..",
    "A": ".###. #...# #...# ##### #...# #...# #...#",
    "B": "####. #...# #...# ####. #...# #...# ####.",
    "C": ".###. #...# #.... #.... #.... #...# .###.",
    "D": "###.. #..#. #...# #...# #...# #..#. ###..",
    "E": "##### #.... #.... ####. #.... #.... #####",
    "F": "##### #.... #.... ####. #.... #.... #....",
    "G": ".###. #...# #.... #.### #...# #...# .####",
    "H": "#...# #...# #...# ##### #...# #...# #...#",
    "I": ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    "J": "..### ...#. ...#. ...#. ...#. #..#. .##..",
    "K": "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    "L": "#.... #.... #.... #.... #.... #.... #####",
    "M": "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    "N": "#...# #...# ##..# #.#.# #..## #...# #...#",
    "O": ".###. #...# #...# #...# #...# #...# .###.",
    "P": "####. #...# #...# ####. #.... #.... #....",
    "Q": ".###. #...# #...# #...# #.#.# #..#. .##.#",
    "R": "####. #...# #...# ####. #.#.. #..#. #...#",
    "S": ".#### #.... #.... .###. ....# ....# ####.",
    "T": "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "U": "#...# #...# #...# #...# #...# #...# .###.",
    "V": "#...# #...# #...# #...# #...# .#.#. ..#..",
    "W": "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    "X": "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    "Y": "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    "Z": "##### ....# ...#. ..#.. .#... #.... #####",
    "-": "..... ..... ..... .###. ..... ..... .....",
    "+": "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    ".": "..... ..... ..... ..... ..... .##.. .##..",
    ",": "..... ..... ..... ..... .##.. ..#.. .#...",
    ":": "..... .##.. .##.. ..... .##.. .##.. .....",
    "(": "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    ")": ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    "[": ".###. .#... .#... .#... .#... .#... .###.",
    "]": ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    "/": "..... ....# ...#. ..#.. .#... #.... .....",
    "=": "..... ..... ##### ..... ##### ..... .....",
    "_": "..... ..... ..... ..... ..... ..... #####",
    "%": "##... ##..# ...#. ..#.. .#... #..## ...##",
    ">": ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    "<": "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    "|": "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    "*": "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    "'": "..#.. ..#.. .#... ..... ..... ..... .....",
    "!": "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    "?": ".###. #...# ....# ...#. ..#.. ..... ..#..",
    "#": ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
}


def glyph(char: str) -> np.ndarray:
    """The ``(7, 5)`` bool bitmap of one character (lower case drawn as upper case, unknown as ``?``).

    Example::

        >>> print("\\n".join("".join("#" if b else "." for b in row) for row in glyph("1")))
        ..#..
        .##..
        ..#..
        ..#..
        ..#..
        ..#..
        .###.
    """
    return _glyph(char.upper()).copy()


@lru_cache(maxsize=None)  # bounded by the glyph table (unknown characters share "?")
def _glyph(char: str) -> np.ndarray:
    rows = _GLYPHS.get(char, _GLYPHS["?"]).split()
    out = np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    out.flags.writeable = False
    return out


def text_width(text: str, scale: int = 1) -> int:
    """Width in pixels of ``text`` drawn by :func:`text_mask` (6 px per character at scale 1, less 1)."""
    return max(len(text) * (GLYPH_W + 1) - 1, 0) * int(scale)


def text_mask(text: str, scale: int = 1) -> np.ndarray:
    """``text`` as a bool mask of ``(7 * scale, text_width(text, scale))`` (1 px between characters).

    Example::

        >>> text_mask("-1").astype(int)[3].tolist()  # the row through the minus sign
        [0, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    """
    n = len(text)
    mask = np.zeros((GLYPH_H, max(n * (GLYPH_W + 1) - 1, 0)), dtype=bool)
    for i, ch in enumerate(text):
        mask[:, i * (GLYPH_W + 1):i * (GLYPH_W + 1) + GLYPH_W] = _glyph(ch.upper())
    if scale != 1:
        mask = np.repeat(np.repeat(mask, int(scale), axis=0), int(scale), axis=1)
    return mask


@lru_cache(maxsize=256)  # panels redraw the same labels every epoch (~100 a epoch); <= ~1 MB
def _text_pixels(text: str, scale: int, vertical: bool) -> tuple[np.ndarray, np.ndarray, int, int]:
    """``(ys, xs, h, w)``: the inked pixels of :func:`text_mask` (rotated for vertical text), read-only."""
    mask = text_mask(text, scale)
    if vertical:
        mask = np.rot90(mask)  # (w, h): reads bottom to top
    ys, xs = (a.astype(np.int32) for a in np.nonzero(mask))
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs, mask.shape[0], mask.shape[1]


# ------------------------------------------------------------------ lines


def line_pixels(x0: Any, y0: Any, x1: Any, y1: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""Pixels of 1-px line segments (DDA), vectorised over segments.

    End points snap to the nearest pixel (``floor(v + 0.5)``); a segment from ``(x0, y0)`` to
    ``(x1, y1)`` then gets ``n = \max(|\Delta x|, |\Delta y|) + 1`` samples, at

    .. math:: (x, y)_k = \big\lfloor (x_0, y_0) + \tfrac{k}{n-1} (\Delta x, \Delta y) + \tfrac12 \big\rfloor,\ k = 0..n-1

    so that consecutive pixels touch (8-connected) and both end points are drawn.

    Args:
        x0, y0, x1, y1: Scalars or equal-length 1-D arrays of segment end points (float pixels).

    Returns:
        ``(xs, ys)``: int arrays of the pixels of all segments, concatenated in order.

    Example::

        >>> xs, ys = line_pixels(0, 0, 4, 2)
        >>> xs.tolist(), ys.tolist()
        ([0, 1, 2, 3, 4], [0, 1, 1, 2, 2])
    """
    x0, y0, x1, y1 = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in (x0, y0, x1, y1))
    x0, y0, x1, y1 = np.broadcast_arrays(x0, y0, x1, y1)
    keep = np.isfinite(x0) & np.isfinite(y0) & np.isfinite(x1) & np.isfinite(y1)
    # far off-canvas end points are pulled in so that pixel indices cannot overflow; ends snap to pixels
    x0, y0, x1, y1 = (np.floor(np.clip(a[keep], -1e6, 1e6) + 0.5) for a in (x0, y0, x1, y1))
    if x0.size == 0:
        return np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp)
    dx, dy = x1 - x0, y1 - y0
    n = (np.floor(np.maximum(np.abs(dx), np.abs(dy)) + 0.5)).astype(np.intp) + 1  # (S,) samples per segment
    n = np.minimum(n, 1 << 16)  # a segment far off-canvas must not allocate without bound
    seg = np.repeat(np.arange(n.size), n)  # (P,) segment of each sample
    k = np.arange(seg.size) - np.repeat(np.cumsum(n) - n, n)  # (P,) index inside its segment
    t = k / np.maximum(n[seg] - 1, 1)
    xs = np.floor(x0[seg] + t * dx[seg] + 0.5).astype(np.intp)
    ys = np.floor(y0[seg] + t * dy[seg] + 0.5).astype(np.intp)
    return xs, ys


# ------------------------------------------------------------------ canvas


class Canvas:
    """An ``(H, W, 3)`` uint8 RGB image with drawing primitives (all clipped to the canvas).

    Args:
        height: Rows, ``>= 1``.
        width: Columns, ``>= 1``.
        background: Fill colour.

    Raises:
        ValueError: If ``height`` or ``width`` is not a positive int.

    Example::

        >>> c = Canvas(4, 6)
        >>> c.rect(1, 1, 3, 2, "#ff0000")
        >>> c.pixels[1, 1:4].tolist()
        [[255, 0, 0], [255, 0, 0], [255, 255, 255]]
    """

    def __init__(self, height: int, width: int, background: Any = (255, 255, 255)) -> None:
        for name, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
        self.height, self.width = int(height), int(width)
        self.pixels = np.empty((self.height, self.width, 3), dtype=np.uint8)  # (H, W, 3)
        self.pixels[...] = hex_to_rgb(background)
        #: Optional ``(x0, y0, x1, y1)`` box: when set, drawing is clipped to it as well (plot areas).
        self.clip: tuple[int, int, int, int] | None = None

    def _clip_box(self, x0: float, y0: float, x1: float, y1: float) -> tuple[int, int, int, int]:
        x0, x1, y0, y1 = (float(np.clip(v, -1e6, 1e6)) for v in (x0, x1, y0, y1))
        xa, xb = sorted((int(np.floor(x0)), int(np.floor(x1))))
        ya, yb = sorted((int(np.floor(y0)), int(np.floor(y1))))
        cx0, cy0, cx1, cy1 = self.clip if self.clip is not None else (0, 0, self.width, self.height)
        return (max(xa, 0, cx0), max(ya, 0, cy0), min(xb, self.width, cx1), min(yb, self.height, cy1))

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: Any, alpha: float = 1.0) -> None:
        """Fill columns ``[x0, x1)`` and rows ``[y0, y1)``; ``alpha < 1`` blends over what is there."""
        xa, ya, xb, yb = self._clip_box(x0, y0, x1, y1)
        if xa >= xb or ya >= yb:
            return
        rgb = np.array(hex_to_rgb(colour), dtype=np.float64)
        if alpha >= 1.0:
            self.pixels[ya:yb, xa:xb] = rgb.astype(np.uint8)
        else:
            block = self.pixels[ya:yb, xa:xb].astype(np.float64)
            self.pixels[ya:yb, xa:xb] = np.floor((1.0 - alpha) * block + alpha * rgb + 0.5).astype(np.uint8)

    def outline(self, x0: int, y0: int, x1: int, y1: int, colour: Any) -> None:
        """1-px frame just inside the box ``[x0, x1) x [y0, y1)``."""
        self.rect(x0, y0, x1, y0 + 1, colour)
        self.rect(x0, y1 - 1, x1, y1, colour)
        self.rect(x0, y0, x0 + 1, y1, colour)
        self.rect(x1 - 1, y0, x1, y1, colour)

    def points(self, xs: Any, ys: Any, colour: Any) -> None:
        """Set the pixels ``(xs[i], ys[i])`` (int arrays; off-canvas ones are dropped)."""
        xs, ys = np.asarray(xs, dtype=np.intp), np.asarray(ys, dtype=np.intp)
        cx0, cy0, cx1, cy1 = self.clip if self.clip is not None else (0, 0, self.width, self.height)
        keep = (xs >= max(cx0, 0)) & (xs < min(cx1, self.width)) & (ys >= max(cy0, 0)) & (ys < min(cy1, self.height))
        colour = np.asarray(colour, dtype=np.uint8) if not isinstance(colour, (str, tuple)) else hex_to_rgb(colour)
        if isinstance(colour, np.ndarray) and colour.ndim == 2:  # (N, 3): one colour per point
            colour = colour[keep]
        self.pixels[ys[keep], xs[keep]] = colour

    def lines(self, x0: Any, y0: Any, x1: Any, y1: Any, colour: Any, width: int = 1) -> None:
        """Draw segments (see :func:`line_pixels`); ``width=2`` also draws them 1 px lower."""
        xs, ys = line_pixels(x0, y0, x1, y1)
        for dy in range(int(width)):
            self.points(xs, ys + dy, colour)

    def polyline(self, xs: Any, ys: Any, colour: Any, width: int = 1) -> None:
        """Connect consecutive points; a non-finite point leaves a gap (no segment to or from it)."""
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        if xs.size == 1:
            if np.isfinite(xs[0]) and np.isfinite(ys[0]):
                self.lines(xs, ys, xs, ys, colour, width)
            return
        self.lines(xs[:-1], ys[:-1], xs[1:], ys[1:], colour, width)

    def discs(self, xs: Any, ys: Any, radius: float, colours: Any) -> None:
        """Filled discs centred on ``(xs[i], ys[i])``; ``colours`` one colour or ``(N, 3)`` uint8."""
        xs = np.floor(np.asarray(xs, dtype=np.float64) + 0.5).astype(np.intp)
        ys = np.floor(np.asarray(ys, dtype=np.float64) + 0.5).astype(np.intp)
        r = max(int(np.ceil(radius)), 0)
        oy, ox = np.mgrid[-r:r + 1, -r:r + 1]
        inside = ox**2 + oy**2 <= radius**2 + 1e-9
        ox, oy = ox[inside], oy[inside]  # (K,)
        colours = np.asarray(colours if not isinstance(colours, (str, tuple)) else hex_to_rgb(colours), dtype=np.uint8)
        if colours.ndim == 2:
            colours = np.repeat(colours, ox.size, axis=0)  # (N * K, 3)
        self.points((xs[:, None] + ox[None, :]).ravel(), (ys[:, None] + oy[None, :]).ravel(), colours)

    def blit(self, x: int, y: int, image: np.ndarray) -> None:
        """Copy an ``(h, w, 3)`` uint8 image with its top-left corner at ``(x, y)``."""
        h, w = image.shape[:2]
        xa, ya, xb, yb = self._clip_box(x, y, x + w, y + h)
        if xa < xb and ya < yb:
            self.pixels[ya:yb, xa:xb] = image[ya - y:yb - y, xa - x:xb - x]

    def text(self, x: float, y: float, text: str, colour: Any = (0, 0, 0), scale: int = 1,
             anchor: str = "left", vertical: bool = False) -> int:
        """Draw ``text`` with its top edge at row ``y``.

        Args:
            x: Left edge (``anchor="left"``), centre (``"centre"``) or right edge (``"right"``).
            y: Top row (for ``vertical`` text: the centre row; it reads bottom to top).
            text: The characters.
            colour: Ink colour.
            scale: Integer magnification of the 5 x 7 glyphs.
            anchor: ``"left"``, ``"centre"`` or ``"right"``.
            vertical: Rotate by 90 degrees counter-clockwise (axis labels on the left).

        Returns:
            The drawn width in pixels along the text.

        Raises:
            ValueError: If ``anchor`` is unknown.
        """
        if anchor not in ("left", "centre", "right"):
            raise ValueError(f"`anchor` must be 'left', 'centre' or 'right', got {anchor!r}.")
        ys, xs, h, w = _text_pixels(str(text), int(scale), bool(vertical))
        if h * w == 0:
            return 0
        left = int(round(x)) - (w // 2 if anchor == "centre" else (w if anchor == "right" else 0))
        top = int(round(y)) - h // 2 if vertical else int(round(y))
        self.points(xs + np.intp(left), ys + np.intp(top), colour)  # int32 pixels + any int offset
        return h if vertical else w
