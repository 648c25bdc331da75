"""Deterministic anatomical torso phantoms: HU volumes with organ label maps, as NIfTI.

Each subject is a lower-thorax / upper-abdomen torso on an ``(x, y, z)`` voxel
grid in RAS+ orientation: ``x`` runs towards the patient's right, ``y``
towards anterior and ``z`` (the axial slice axis) towards superior, so the
lungs shrink and the liver, stomach, spleen and kidneys take over as ``z``
decreases. The anatomy is built from analytic shapes whose sizes, positions
and outlines are drawn per subject:

* body outline (superellipse with low-order harmonic bumps), subcutaneous fat
  of varying thickness, a muscle wall with paraspinal and pectoral bulk;
* domed hemidiaphragms (right higher than left) that decide where lung ends
  and abdomen begins, which gives the posterior costophrenic recesses;
* lungs with a gravity-dependent density gradient, correlated parenchymal
  texture and a 3D vessel tree that thins towards the periphery;
* heart (blood pool, left-ventricular myocardium, epicardial fat), descending
  aorta, oesophagus, inferior vena cava;
* vertebrae (cortical shell, trabecular core, discs, posterior elements),
  obliquely cut ribs, sternum;
* liver, spleen, stomach (sometimes with a gas cap), kidneys with sinus fat and
  medullary pyramids, and a few small hypo-/hyper-dense lesions in liver or lung;
* below the liver (``lower_abdomen``, from a stream of its own): psoas muscles, the colon
  (ascending, sagging transverse, descending, sigmoid, rectum) with mottled faeces full of
  small gas bubbles (``bubbles``), gas or a gas-fluid level, 10-25 small-bowel loops (fluid,
  oral contrast, gas-fluid level, gas or collapsed), and, in pelvic slabs, iliac wings,
  sacrum, bladder, gluteal muscles, the aortic bifurcation and the femoral heads;
* the scan set-up: a contrast phase (non-contrast, portal-venous or arterial) that
  sets the enhancement of blood and organs, a curved patient table under the back,
  arms beside the body or raised out of the slab, and the quantum noise of the
  reconstruction (band-limited, inside the patient and on the table only).

Partial volume is modelled by painting every slice on a grid that is
supersampled in-plane and across the slab thickness, then averaging HU and
taking the majority organ label per output voxel. All randomness comes from
``np.random.default_rng`` seeded with ``(seed, subject)``, so every subject is
reproducible on its own, and the NIfTI files are written byte-for-byte
deterministically (gzip with ``mtime=0``) so that DVC hashes are stable.
The arithmetic goes through :mod:`sparsect.data.fpmath` (or sums written out
in a fixed order), so the bytes do not depend on the CPU's SIMD extensions.

Modules, in the order a subject is made:

* ``config``: :class:`PhantomConfig` and :func:`phantom_affine`;
* ``anatomy``: the per-subject anatomy (all its random draws) and body-wall profiles,
  built from the shapes of ``shapes`` and the tissues of ``materials``;
* ``grid``: the supersampled grid over the body; ``fields``: the in-plane
  fields that do not change along z;
* ``painting``: organ labels and materials, slice by slice;
* ``vessels`` and ``lesions``: 3D details grown into the painted volume;
* ``partial_volume`` and ``texture``: the output voxels' HU, with noise texture;
* ``generate``: :func:`generate_subject`, the above in order, then the scanner blur and
  the reconstruction noise;
* ``writing``: :func:`write_dataset`, the NIfTI files.

The organ label values and their tissue classes live in :mod:`sparsect.priors.organs`.
"""

from __future__ import annotations

from sparsect.data.phantom.config import PhantomConfig, phantom_affine
from sparsect.data.phantom.generate import generate_subject
from sparsect.data.phantom.writing import write_dataset
from sparsect.priors.organs import ORGAN_LABELS, ORGAN_TO_TISSUE

__all__ = [
    "ORGAN_LABELS",
    "ORGAN_TO_TISSUE",
    "PhantomConfig",
    "generate_subject",
    "phantom_affine",
    "write_dataset",
]
