"""The ``labelmap`` phantom style: a tissue label volume first, then an image formed from it like a scanner would.

What it does differently from an analytic renderer:

- **Anatomy as labels.** Each series paints a uint8 label volume of 28 tissues on a coarse canvas aligned with the
  acquisition axes (1.0-1.4 mm for "real", 2.0-2.6 mm for "small"): skin, subcutaneous fat, temporalis bulk, skull
  with cortical tables and diploe (thickness varying over the vault, thicker at the base), a skull base built from a
  per-patient floor height map (domed orbital roofs, cribriform dip, sella, bowl-shaped middle fossae, petrous ridges,
  clivus, foramen magnum), dense petrous pyramids, mastoid and ethmoid air cells (porous, from random fields),
  sphenoid/maxillary/frontal sinuses with mucosa, orbits (globe, lens, fat cone, optic nerve, muscles, bony walls),
  jaw, teeth, C1/C2, spinal canal and cord, dura, falx and tentorium, CSF with cisterns (suprasellar, prepontine,
  perimesencephalic, cisterna magna, Sylvian fissures, cuffs around the arteries), a cortex folded by sulci (the zero
  sheets of a random field inside a cortical band), grey/white split by morphological erosion (so the cortical
  ribbon follows every sulcus), deep nuclei, ventricles with choroid plexus, brainstem, cerebellum with white core,
  pituitary, cavernous sinuses and the dural venous sinuses.
- **Vessels as labels on a fine block-sparse grid** (0.3-0.6 mm real, 0.65-1 mm small), allocated only where a
  vessel passes. The arterial tree follows the spec's centrelines (mirrored), moved by a smooth random displacement
  field so junctions stay joined, splined, made tortuous, with variants (fetal PCA, hypoplastic/absent PComm, A1,
  AComm, vertebral), extra M2 trunk, cortical branches, ophthalmic, anterior choroidal, middle meningeal and
  external carotid arteries. Every vessel is a chain of tapered capsules; a fine voxel takes its nearest capsule's
  label (lumen, wall) and competition segmentation value.
- **Aneurysms** are unions of capsules at the spec's sites (bifurcation apex, dome along the flow): spherical,
  elongated, multi-lobed, each optionally with a daughter bleb, narrow to wide necks (0.5-0.9 x dome), slow-flow
  patches in large sacs and sometimes partial thrombosis. Log-normal dome (median 4.5 mm) unless ``dome_mm``.
- **Mimics**: infundibula (conical widenings at branch origins), vessel loops, crossing branches, small veins
  (basal vein, internal cerebral, superficial/deep middle cerebral, cortical veins, Galen), cavernous sinus around
  the siphon, wall calcifications, anterior clinoids and petrous bone next to the carotid.
- **Image formation**: per-label intensities drawn per series inside the spec's ranges (with sequence options: fat
  saturation, bright or void blood, bright or dark veins) plus a smooth per-tissue texture; partial volume by
  separable PSF matrices that integrate the slice profile (flat top with Gaussian edges for 2D, Gaussian for 3D CT,
  a Lanczos-windowed sinc for MR in plane, i.e. truncated k-space with its ringing) over each label voxel; the
  vessel blocks are projected straight onto the native grid, the coarse background through an "acquired matrix"
  grid. Then the protocol's effects: CT quantum noise drawn on the acquired matrix (its grain = the reconstruction
  kernel), stronger through the skull base, optional sharp-kernel unsharp masking, beam-hardening bands and streaks
  between the petrous pyramids, occasional metal streaks at the teeth, the reconstruction circle; MR coil bias,
  Rician noise (SNR 20-50 for real voxels), zero-filled sinc interpolation or FFT truncation (Gibbs ringing), TOF
  multi-slab gain dips (venetian blind), arterial inflow saturation per slab and distal fading, venous saturation
  and the bright-fat pitfall, 2D slice-to-slice gain and occasional motion ghosts, random final MR scale.

Measured cost per series (this 2-core machine under heavy shared load, load average ~8; CPU seconds with BLAS held to
one thread, peak RSS of the process):
"small" CTA 0.5 s, MRA 0.4-0.5 s, T2 0.7-0.9 s, T1 post 0.7-0.95 s, under 170 MB;
"real" CTA (200-280 x 512 x 512) 2.9-3.9 s / 680-750 MB, MRA (120-200 x 416-512^2) 1.7-2.6 s / 410-460 MB,
T2 (3D 166-176 x 224-352^2 or 2D 28 x 512^2) 1.1-3.7 s / 350-490 MB, T1 post (3D 181-192 x 240-384^2 or 2D 29 x 448^2)
1.9-2.7 s / 280-410 MB.
"""

from __future__ import annotations

from .pipeline import render_series

__all__ = ["render_series"]
