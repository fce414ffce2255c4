"""Explore's first view as images (``nip_core.figures.raster``, issue 26): one cell per neuron on the shared
diverging scale, float noise in a difference drawn as zero, and a change map of ε = 0 all zero."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from nip_core.figures.raster import (MARK_MIN_CELL, ZERO_TOLERANCE, colour_bar_png, diverging_rgb, neuron_grid_png,
                                     shared_limit, without_noise)


def _img(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_the_scale_is_blue_white_red_and_clipped():
    rgb = diverging_rgb(np.array([-2.0, -1.0, 0.0, 1.0, 2.0]), lim=1.0)
    assert tuple(rgb[0]) == tuple(rgb[1]) and tuple(rgb[3]) == tuple(rgb[4])       # clipped at ±lim
    assert rgb[1][2] > rgb[1][0] and rgb[3][0] > rgb[3][2]                           # blue below, red above
    assert min(rgb[2]) > 240                                                         # white at zero


def test_one_cell_per_neuron_with_dead_grey_and_front_outlined():
    n = 16                                                                           # a 4 × 4 grid
    values = np.linspace(-1, 1, n)
    dead = np.zeros(n)
    dead[5] = 1
    img = _img(neuron_grid_png(values, 1.0, dead, front=[0], tail=[15], width=160))
    assert img.shape[:2] == (161, 161)
    cell = 160 // 4
    centre = lambda j: img[(j // 4) * cell + cell // 2, (j % 4) * cell + cell // 2]   # noqa: E731
    assert tuple(centre(5)) == (189, 189, 189)                                       # dead: grey
    assert centre(0)[2] > centre(0)[0] and centre(14)[0] > centre(14)[2]             # low blue, high red
    assert cell >= MARK_MIN_CELL and tuple(img[2, 2]) == (0, 0, 0)                   # front: a black outline
    assert tuple(centre(15)) == (0, 0, 0)                                            # tail: a black dot


def test_float_noise_is_zero_and_a_zero_change_is_drawn_white():
    d = np.array([6e-8, -3e-8, 0.0, 0.5])
    assert list(without_noise(d, scale=1.0)) == [0.0, 0.0, 0.0, 0.5]
    assert without_noise(np.array([ZERO_TOLERANCE * 2]), 1.0)[0] != 0
    zero = without_noise(np.array([6e-8, -6e-8]), scale=4.0)
    lim = shared_limit(zero)
    assert lim == 1.0                                                                # not stretched to the noise
    img = _img(neuron_grid_png(zero, lim, width=40))
    assert img.min() > 240                                                           # all white: no change


def test_colour_bar_is_an_image_with_its_range():
    img = _img(colour_bar_png(0.5, "influence", width=200))
    assert img.shape[1] == 200 and img[5, 0][2] > img[5, 0][0] and img[5, 199][0] > img[5, 199][2]
