"""Abdominal anatomy and lesions in physical (mm, LPS) coordinates, sampled on a voxel grid.

Geometry convention (shared with the DICOM writer and the truth masks): a `Grid` is an axial
stack with ImageOrientationPatient [1,0,0,0,1,0]. Array axes are (x, y, z) = (DICOM column index,
DICOM row index, slice index in order of increasing LPS z). Voxel (i, j, k) has its centre at
LPS `origin + (i*dx, j*dy, k*dz)`, where `origin` is ImagePositionPatient of the first slice.
LPS +x points to the patient's Left, +y to Posterior, +z to Superior, so the liver sits at
negative x and the kidneys at positive y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medsegllm.knowledge import ORGANS, SEG_CLASSES, SUBTYPES

# Tissue codes of the rendered map (the renderer gives each a modality-specific intensity).
AIR, FAT, SOFT, MUSCLE, LIVER, SPLEEN, KIDNEY, BONE, VESSEL, HCC, MET, MET_RIM, RCC = range(13)
LESION_TISSUE = {"hcc": HCC, "metastasis": MET, "rcc": RCC}
_LABEL_OF_TISSUE = {LIVER: SEG_CLASSES.index("liver"), KIDNEY: SEG_CLASSES.index("kidney")}
_LESION_LABEL = SEG_CLASSES.index("lesion")
MIN_LESION_MM, MAX_LESION_MM = 8.0, 40.0


@dataclass(frozen=True)
class Grid:
    origin: tuple[float, float, float]  # LPS centre of voxel (0, 0, 0)
    spacing: tuple[float, float, float]  # (column dx, row dy, slice dz) in mm
    shape: tuple[int, int, int]  # (columns, rows, slices)

    def affine_lps(self) -> np.ndarray:
        affine = np.diag([*self.spacing, 1.0])
        affine[:3, 3] = self.origin
        return affine

    def affine_ras(self) -> np.ndarray:
        """The affine nibabel/dcm2niix conventions give: the LPS affine with x and y negated."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Voxel-centre coordinates, shaped to broadcast to the full (x, y, z) volume."""
        x, y, z = (np.float32(o) + np.float32(s) * np.arange(n, dtype=np.float32)
                   for o, s, n in zip(self.origin, self.spacing, self.shape))
        return x[:, None, None], y[None, :, None], z[None, None, :]


@dataclass(frozen=True)
class Ellipsoid:
    center: tuple[float, float, float]
    semi: tuple[float, float, float]
    angle_deg: float = 0.0  # in-plane rotation about z

    def radius(self, grid: Grid) -> np.ndarray:
        """Normalized ellipsoid radius of every voxel (< 1 inside)."""
        x, y, z = grid.axes_mm()
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        c, s = np.cos(np.radians(self.angle_deg)), np.sin(np.radians(self.angle_deg))
        u, v = c * dx + s * dy, -s * dx + c * dy
        return np.sqrt((u / self.semi[0]) ** 2 + (v / self.semi[1]) ** 2 + (dz / self.semi[2]) ** 2)

    def mask(self, grid: Grid) -> np.ndarray:
        return self.radius(grid) < 1.0


@dataclass(frozen=True)
class Anatomy:
    body: tuple[float, float, float, float]  # centre x, centre y, semi x, semi y (elliptic cylinder)
    fat_mm: float
    liver: Ellipsoid
    liver_left: Ellipsoid
    kidney_right: Ellipsoid  # patient's right: negative x
    kidney_left: Ellipsoid
    spleen: Ellipsoid
    spine_xy_r: tuple[float, float, float]
    aorta_xy_r: tuple[float, float, float]
    muscle_semi: tuple[float, float]
    z_mid: float  # cranio-caudal centre of the organs, where a scan is centred


@dataclass(frozen=True)
class Lesion:
    organ: str
    location: str
    laterality: str | None
    subtype: str
    size_mm: float  # largest diameter
    dims_mm: tuple[float, float, float]  # axial major, axial minor, cranio-caudal diameters
    center_mm: tuple[float, float, float]  # LPS
    angle_deg: float
    strength: float  # 0..1 within the subtype's contrast range

    def ellipsoid(self) -> Ellipsoid:
        return Ellipsoid(self.center_mm, tuple(d / 2 for d in self.dims_mm), self.angle_deg)


@dataclass(frozen=True)
class Phantom:
    labels: np.ndarray  # uint8, SEG_CLASSES
    tissue: np.ndarray  # uint8 tissue codes
    strength: np.ndarray  # float32, lesion contrast strength on lesion voxels, else 0
    lesions: tuple[Lesion, ...]


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """One patient's organ shapes and positions, jittered around a plausible adult abdomen."""
    u = rng.uniform
    bx, by = u(-8, 8), u(5, 20)
    z_mid = u(-420, -380)
    zl, zk = z_mid + u(10, 25), z_mid - u(25, 40)
    return Anatomy(
        body=(bx, by, u(130, 148), u(98, 112)),
        fat_mm=u(10, 22),
        liver=Ellipsoid((bx - u(55, 68), by - u(0, 12), zl), (u(75, 88), u(62, 75), u(55, 66)), u(-10, 10)),
        liver_left=Ellipsoid((bx + u(5, 20), by - u(35, 45), zl + u(10, 20)),
                             (u(50, 62), u(24, 30), u(32, 40)), u(-10, 10)),
        kidney_right=Ellipsoid((bx - u(55, 65), by + u(40, 50), zk - u(0, 12)),
                               (u(24, 29), u(20, 25), u(44, 54)), -u(10, 25)),
        kidney_left=Ellipsoid((bx + u(55, 65), by + u(40, 50), zk + u(0, 10)),
                              (u(24, 29), u(20, 25), u(44, 54)), u(10, 25)),
        spleen=Ellipsoid((bx + u(72, 85), by + u(10, 25), zl + u(0, 15)), (u(28, 36), u(42, 52), u(40, 50)), u(20, 40)),
        spine_xy_r=(bx, by + u(55, 62), u(16, 20)),
        aorta_xy_r=(bx + u(12, 20), by + u(30, 36), u(10, 13)),
        muscle_semi=(u(22, 28), u(15, 20)),
        z_mid=z_mid,
    )


def _disc(grid: Grid, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
    x, y, _ = grid.axes_mm()
    return ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0


def organ_tissue(anatomy: Anatomy, grid: Grid) -> np.ndarray:
    """Tissue map of the anatomy without lesions; later organs paint over earlier ones."""
    shape = grid.shape
    tissue = np.zeros(shape, dtype=np.uint8)
    bx, by, ax, ay = anatomy.body
    inner = np.broadcast_to(_disc(grid, bx, by, ax - anatomy.fat_mm, ay - anatomy.fat_mm), shape)
    tissue[np.broadcast_to(_disc(grid, bx, by, ax, ay), shape)] = FAT
    tissue[inner] = SOFT
    mx, my = anatomy.muscle_semi
    for side in (-1, 1):
        tissue[np.broadcast_to(_disc(grid, bx + side * 35, by + 78, mx, my), shape) & inner] = MUSCLE
    ax_, ay_, ar = anatomy.aorta_xy_r
    tissue[np.broadcast_to(_disc(grid, ax_, ay_, ar, ar), shape)] = VESSEL
    tissue[anatomy.spleen.mask(grid) & inner] = SPLEEN
    tissue[(anatomy.liver.mask(grid) | anatomy.liver_left.mask(grid)) & inner] = LIVER
    tissue[(anatomy.kidney_right.mask(grid) | anatomy.kidney_left.mask(grid)) & inner] = KIDNEY
    sx, sy, sr = anatomy.spine_xy_r
    tissue[np.broadcast_to(_disc(grid, sx, sy, sr, sr) | _disc(grid, sx, sy + sr + 8, 8, 10), shape)] = BONE
    return tissue


def _sublocation(anatomy: Anatomy, organ: str, location: str, laterality: str | None, grid: Grid) -> np.ndarray:
    """Voxels of the named sublocation region (before intersecting with the organ itself)."""
    x, y, z = grid.axes_mm()
    if organ == "liver":
        c, s = anatomy.liver.center, anatomy.liver.semi
        dome = z > c[2] + 0.4 * s[2]
        if location == "dome":
            return np.broadcast_to(dome, grid.shape)
        left = x > anatomy.body[0] - 5
        return np.broadcast_to(~dome & (left if location == "left lobe" else ~left), grid.shape)
    kidney = anatomy.kidney_left if laterality == "left" else anatomy.kidney_right
    dz = z - kidney.center[2]
    third = kidney.semi[2] / 3
    region = {"upper pole": dz > third, "lower pole": dz < -third, "interpolar": np.abs(dz) <= third}[location]
    side = x > anatomy.body[0] if laterality == "left" else x < anatomy.body[0]
    return np.broadcast_to(region & side, grid.shape)


def _place(anatomy: Anatomy, grid: Grid, tissue: np.ndarray, organ: str, location: str,
           laterality: str | None, radius_mm: float, rng: np.random.Generator) -> tuple[float, float, float] | None:
    """A lesion centre deep enough inside the organ's sublocation, or None if there is no room."""
    host = tissue == (LIVER if organ == "liver" else KIDNEY)
    padded = np.pad(host, 1)  # the volume edge counts as outside, so lesions stay in the scan
    depth = ndimage.distance_transform_edt(padded, sampling=grid.spacing)[1:-1, 1:-1, 1:-1]
    candidates = np.flatnonzero((depth >= 0.7 * radius_mm) & _sublocation(anatomy, organ, location, laterality, grid))
    if candidates.size == 0:
        return None
    i, j, k = np.unravel_index(candidates[rng.integers(candidates.size)], grid.shape)
    return tuple(float(o + s * (idx + rng.uniform(-0.5, 0.5)))
                 for o, s, idx in zip(grid.origin, grid.spacing, (i, j, k)))


def sample_lesions(anatomy: Anatomy, grid: Grid, tissue: np.ndarray, subtype: str, n: int,
                   rng: np.random.Generator) -> list[Lesion]:
    """Up to n lesions of one subtype, each in a random sublocation of an organ the subtype occurs in."""
    lesions: list[Lesion] = []
    for _ in range(n):
        organs = SUBTYPES[subtype]["organs"]
        organ = organs[0] if len(organs) == 1 else str(rng.choice(organs, p=[0.75, 0.25]))
        size = float(rng.uniform(MIN_LESION_MM, MAX_LESION_MM))
        locations = list(ORGANS[organ]["sublocations"])
        for attempt in range(12):
            location = str(rng.choice(locations))
            laterality = str(rng.choice(["left", "right"])) if organ == "kidney" else None
            center = _place(anatomy, grid, tissue, organ, location, laterality, size / 2, rng)
            if center is not None:
                break
            size = max(MIN_LESION_MM, size * 0.8)
        else:
            continue
        minor, cc = size * rng.uniform(0.65, 1.0), size * rng.uniform(0.7, 1.0)
        lesions.append(Lesion(organ, location, laterality, subtype, round(size, 1),
                              (round(size, 1), round(minor, 1), round(cc, 1)),
                              tuple(round(c, 2) for c in center), float(rng.uniform(0, 180)),
                              float(rng.uniform(0, 1))))
    return lesions


def make_phantom(anatomy: Anatomy, grid: Grid, lesions: list[Lesion], tissue: np.ndarray | None = None) -> Phantom:
    """Paint the lesions into the organ tissue map (inside their host organ) and derive the labels."""
    tissue = organ_tissue(anatomy, grid) if tissue is None else tissue.copy()
    strength = np.zeros(grid.shape, dtype=np.float32)
    for lesion in lesions:
        host = tissue == (LIVER if lesion.organ == "liver" else KIDNEY)
        radius = lesion.ellipsoid().radius(grid)
        inside = (radius < 1.0) & host
        tissue[inside] = LESION_TISSUE[lesion.subtype]
        if lesion.subtype == "metastasis":
            tissue[inside & (radius > 0.75)] = MET_RIM
        strength[inside] = lesion.strength
    labels = np.zeros(grid.shape, dtype=np.uint8)
    for code, label in _LABEL_OF_TISSUE.items():
        labels[tissue == code] = label
    labels[np.isin(tissue, (HCC, MET, MET_RIM, RCC))] = _LESION_LABEL
    return Phantom(labels, tissue, strength, tuple(lesions))
