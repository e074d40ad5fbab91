"""The fine vessel labels: a sparse grid of small blocks (0.3-1 mm voxels) allocated only where a vessel passes.

Every vessel, aneurysm lobe, infundibulum and calcification is a tapered capsule in the acquisition frame. A fine voxel
takes the nearest capsule's label: lumen (artery, sac, vein, calcification) inside it, then its wall (the CSF cuffs
around vessels are painted on the coarse tissue canvas). Each block's intensities, minus the background they replace,
go through the acquisition PSF straight onto the native grid, so thin vessels get their true partial volume.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .psf import axis_weights, nonzero_span

NONE, SLEEVE, WALL, ARTERY, SAC, VEIN, CALC = range(7)
LUMEN = np.zeros(8, bool)
LUMEN[[ARTERY, SAC]] = True


@dataclass
class Prims:
    """Capsules as arrays (acquisition-frame mm) with what each paints."""

    a: np.ndarray  # (n, 3)
    b: np.ndarray  # (n, 3)
    ra: np.ndarray  # (n,)
    rb: np.ndarray  # (n,)
    kind: np.ndarray  # (n,) ARTERY / SAC / VEIN / CALC
    seg: np.ndarray  # (n,) competition segmentation value
    wall: np.ndarray  # (n,) mm
    sleeve: np.ndarray  # (n,) mm of CSF cuff (painted on the canvas)
    flow_a: np.ndarray  # (n,) path length from the root at a, mm
    flow_b: np.ndarray
    gain: np.ndarray  # (n,) per-vessel intensity factor
    sac: np.ndarray  # (n,) index of the aneurysm (-1: none)

    @staticmethod
    def concat(parts: list[Prims]) -> Prims:
        return Prims(*(np.concatenate([getattr(p, f) for p in parts]) for f in Prims.__dataclass_fields__))

    def __len__(self) -> int:
        return len(self.ra)


@dataclass
class Voxels:
    """Labelled fine voxels handed to the shader."""

    kind: np.ndarray
    prim: np.ndarray
    flow: np.ndarray
    u: np.ndarray  # (n, 3) acquisition-frame mm


class FineGrid:
    """Block-sparse fine grid over the acquisition frame, with the PSF matrices onto the native stack."""

    def __init__(self, start: np.ndarray, step: np.ndarray, n_blocks: np.ndarray, block: int, acq_shape, acq_spacing,
                 psf_sigma: np.ndarray, slab_width: float, sinc_cutoff: tuple | None = None) -> None:
        self.start, self.step, self.block = np.asarray(start, float), np.asarray(step, float), int(block)
        self.n_blocks = np.asarray(n_blocks, int)
        self.shape = self.n_blocks * self.block
        self.mats, self.spans = [], []
        for a in range(3):
            dst = np.arange(acq_shape[a]) * acq_spacing[a]
            cut = None if sinc_cutoff is None or a == 0 else sinc_cutoff[a - 1]
            w = axis_weights(dst, self.start[a], self.step[a], int(self.shape[a]), psf_sigma[a],
                             slab_width if a == 0 else 0.0, sinc_cutoff=cut)
            self.mats.append(w)
            self.spans.append(nonzero_span(w))

    def footprint(self, key: tuple[int, int, int]) -> list[tuple[int, int]]:
        """Native-grid index range each axis of a block lands on."""
        out = []
        for a in range(3):
            c0, c1 = key[a] * self.block, (key[a] + 1) * self.block
            first, last = self.spans[a]
            lo, hi = int(first[c0:c1].min()), int(last[c0:c1].max())
            out.append((lo, max(hi, lo)))
        return out

    def assign(self, prims: Prims) -> dict[tuple[int, int, int], list[int]]:
        """Blocks touched by each capsule's bounding box (capsule + wall + one voxel); keeps the boxes."""
        reach = np.maximum(prims.ra, prims.rb) + prims.wall + 1.5 * self.step.max()
        lo = np.floor((np.minimum(prims.a, prims.b) - reach[:, None] - self.start) / self.step).astype(int)
        hi = np.ceil((np.maximum(prims.a, prims.b) + reach[:, None] - self.start) / self.step).astype(int) + 1
        self.box_lo, self.box_hi = np.maximum(lo, 0), np.minimum(hi, self.shape)
        blo = self.box_lo // self.block
        bhi = (self.box_hi - 1) // self.block
        table: dict[tuple[int, int, int], list[int]] = {}
        for i in range(len(prims)):
            if np.any(self.box_hi[i] <= self.box_lo[i]):
                continue
            for key in itertools.product(*(range(blo[i, a], bhi[i, a] + 1) for a in range(3))):
                table.setdefault(key, []).append(i)
        return table

    def label_block(self, key, ids: list[int], prims: Prims) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kind, nearest capsule, flow) per voxel of one block. Only voxels inside some capsule's box are measured,
        against all the block's capsules at once."""
        n = self.block
        base = np.asarray(key) * n
        near = np.zeros((n, n, n), bool)
        for i in ids:
            lo, hi = np.maximum(self.box_lo[i] - base, 0), np.minimum(self.box_hi[i] - base, n)
            near[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
        flat = np.flatnonzero(near)
        kind = np.zeros(n ** 3, np.uint8)
        gid = np.full(n ** 3, -1, np.int32)
        flow = np.zeros(n ** 3, np.float32)
        if flat.size:
            loc = np.unravel_index(flat, (n, n, n))
            xyz = [(self.start[c] + self.step[c] * (base[c] + loc[c])).astype(np.float32)[None, :] for c in range(3)]
            sel = np.asarray(ids)
            a = prims.a[sel].astype(np.float32)
            ab = (prims.b[sel] - prims.a[sel]).astype(np.float32)
            inv = (1.0 / (np.sum(ab.astype(np.float64) ** 2, axis=1) + 1e-9)).astype(np.float32)
            rel = [xyz[c] - a[:, c:c + 1] for c in range(3)]  # (m, N) each
            t = rel[0] * ab[:, 0:1]
            t += rel[1] * ab[:, 1:2]
            t += rel[2] * ab[:, 2:3]
            t *= inv[:, None]
            np.clip(t, 0.0, 1.0, out=t)
            d2 = (rel[0] - t * ab[:, 0:1]) ** 2
            d2 += (rel[1] - t * ab[:, 1:2]) ** 2
            d2 += (rel[2] - t * ab[:, 2:3]) ** 2
            ra = prims.ra[sel].astype(np.float32)[:, None]
            d = np.sqrt(d2) - (ra + t * (prims.rb[sel].astype(np.float32)[:, None] - ra))
            j = np.argmin(d, axis=0)
            cols = np.arange(flat.size)
            best, tb, g = d[j, cols], t[j, cols], sel[j]
            k = np.where(best < prims.wall[g], WALL, NONE).astype(np.uint8)
            k = np.where(best < 0, prims.kind[g], k)
            kind[flat], gid[flat] = k, g
            flow[flat] = prims.flow_a[g] + tb * (prims.flow_b[g] - prims.flow_a[g])
        shape = (n, n, n)
        return kind.reshape(shape), gid.reshape(shape), flow.reshape(shape)

    def voxel_u(self, key, flat_idx: np.ndarray) -> np.ndarray:
        loc = np.stack(np.unravel_index(flat_idx, (self.block,) * 3), axis=1)
        return self.start + self.step * (np.asarray(key) * self.block + loc)


class AccBox:
    """A sub-box of the native grid that accumulates the vessel contributions."""

    def __init__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        self.lo, self.hi = np.asarray(lo, int), np.asarray(hi, int)
        self.data = np.zeros(tuple(np.maximum(self.hi - self.lo, 0)), np.float32)

    def add(self, ranges: list[tuple[int, int]], values: np.ndarray) -> None:
        sl = tuple(slice(r0 - l, r1 - l) for (r0, r1), l in zip(ranges, self.lo, strict=True))
        self.data[sl] += values


def _project(grid: FineGrid, key, ranges, vol: np.ndarray) -> np.ndarray:
    """Block values through the per-axis PSF matrices onto its native footprint."""
    subs = [grid.mats[a][ranges[a][0]:ranges[a][1], key[a] * grid.block:(key[a] + 1) * grid.block] for a in range(3)]
    t = np.tensordot(subs[0], vol, axes=(1, 0))
    t = np.matmul(subs[1], t)
    return t @ subs[2].T


def render_blocks(grid: FineGrid, prims: Prims, shade: Callable[[Voxels], np.ndarray], with_lumen: bool
                  ) -> tuple[AccBox, AccBox | None, dict]:
    """Paint, shade and project every touched block; returns the accumulated image delta, the lumen fraction (for
    the label map) and the per-block nearest-segment arrays."""
    table = grid.assign(prims)
    feet = {key: grid.footprint(key) for key in table}
    if feet:
        lo = np.min([[r[0] for r in f] for f in feet.values()], axis=0)
        hi = np.max([[r[1] for r in f] for f in feet.values()], axis=0)
    else:
        lo = hi = np.zeros(3, int)
    acc = AccBox(lo, hi)
    lumen = AccBox(lo, hi) if with_lumen else None
    segs = {}
    for key, ids in table.items():
        kind, gid, flow = grid.label_block(key, ids, prims)
        flat = np.flatnonzero(kind)
        if flat.size == 0:
            continue
        vox = Voxels(kind=kind.ravel()[flat], prim=gid.ravel()[flat], flow=flow.ravel()[flat],
                     u=grid.voxel_u(key, flat))
        vol = np.zeros(kind.size, np.float32)
        vol[flat] = shade(vox)
        ranges = feet[key]
        if any(r1 <= r0 for r0, r1 in ranges):
            continue
        acc.add(ranges, _project(grid, key, ranges, vol.reshape(kind.shape)))
        if lumen is not None:
            ind = LUMEN[kind].astype(np.float32)
            if ind.any():
                lumen.add(ranges, _project(grid, key, ranges, ind))
            segs[key] = np.where(gid >= 0, prims.seg[np.maximum(gid, 0)], 0).astype(np.uint8)
    return acc, lumen, segs
