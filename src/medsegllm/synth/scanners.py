"""The six simulated scanners of the demo cohort.

They differ the way real scanners do (intensity transfer, noise level and texture, resolution,
slice thickness, MR bias field and contrast, file naming and instance ordering), so that the
cross-device parts of the method (DAN, PDM, the held-out-device gate) have something to fix.
The last two are the "new/rare" devices: fewer studies, never voxel-labelled, held out.

The held-out scanners are deliberately harder than the training scanners, in ways ingest's
harmonization cannot undo (issue #7 asks for a cohort where a plain U-Net loses at least 0.10 Dice
on a held-out device): the Toshiba is a low-dose protocol (noise 50 HU with 3 mm texture, a soft
2.5 mm kernel) whose HU calibration has drifted (x0.95, +30 HU, which the fixed CT window does not
correct); the SIGNA Artist is a 1.5 T coil with a strong bias field (0.6), flatter contrast
(gamma 0.6: Nyul standardization fixes the global curve but not the spatial bias), more noise
and a coarse 64 matrix. Knobs, all in `ScannerProfile`: `noise_sigma`, `noise_corr_mm`, `psf_mm`,
`hu_scale`/`hu_offset` (CT), `mr_gain`/`mr_bias`/`mr_gamma` (MR), `matrix`, `slice_thickness_mm`.
With the earlier, milder held-out profiles (noise 28 HU, +-10 HU; bias 0.25, gamma 0.88) a plain
U-Net scored the same on held-out and seen scanners: the cohort could not show a generalization gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from medsegllm.ingest.identity import device_id


@dataclass(frozen=True)
class ScannerProfile:
    manufacturer: str
    model_name: str
    modality: Literal["CT", "MR"]
    station_name: str
    institution: str
    holdout: bool
    weight: float  # relative share of studies
    fov_mm: float
    matrix: int
    slice_thickness_mm: float
    n_slices: tuple[int, int]  # inclusive range
    noise_sigma: float  # CT: HU; MR: fraction of the tissue scale
    noise_corr_mm: float  # 0: white noise; else Gaussian correlation length of the texture
    psf_mm: float  # in-plane blur of the reconstruction
    hu_scale: float = 1.0  # CT calibration: HU_out = hu_scale * HU + hu_offset
    hu_offset: float = 0.0
    signed_pixels: bool = False  # CT stored as int16 (True) or uint16 (False)
    mr_gain: float = 1.0  # MR global gain: stored value of unit signal
    mr_bias: float = 0.0  # MR multiplicative bias field strength
    mr_gamma: float = 1.0  # MR tissue contrast: signal ** gamma
    file_pattern: str = "IM{:04d}.dcm"  # formatted with the file's 1-based index
    instance_order: Literal["ascending", "descending", "shuffled"] = "ascending"
    series_description: str = "AXIAL"
    field_strength_t: float = 0.0  # MR only

    @property
    def device_id(self) -> str:
        """The device_id ingest will derive from this scanner's headers."""
        return device_id(self.manufacturer, self.model_name)


SCANNERS: tuple[ScannerProfile, ...] = (
    ScannerProfile(
        "SIEMENS", "SOMATOM Force", "CT", "CTFORCE01", "St. Aurelia University Hospital", False, 1.0,
        fov_mm=320.0, matrix=128, slice_thickness_mm=4.0, n_slices=(36, 40),
        noise_sigma=10.0, noise_corr_mm=0.0, psf_mm=1.0, hu_scale=1.0, hu_offset=0.0,
        signed_pixels=False, file_pattern="IM{:04d}.dcm", series_description="ABD PV 4.0 Br40",
        instance_order="ascending",
    ),
    ScannerProfile(
        "GE MEDICAL SYSTEMS", "Revolution CT", "CT", "GEREVCT", "Northfield General Hospital", False, 1.0,
        fov_mm=340.0, matrix=112, slice_thickness_mm=5.0, n_slices=(30, 34),
        noise_sigma=18.0, noise_corr_mm=3.0, psf_mm=1.5, hu_scale=1.01, hu_offset=8.0,
        signed_pixels=True, file_pattern="slice_{}.dcm", series_description="PORTAL VENOUS 5mm",
        instance_order="descending",
    ),
    ScannerProfile(
        "SIEMENS", "Skyra", "MR", "MRSKYRA3T", "St. Aurelia University Hospital", False, 1.0,
        fov_mm=320.0, matrix=96, slice_thickness_mm=5.0, n_slices=(30, 34),
        noise_sigma=0.03, noise_corr_mm=0.0, psf_mm=1.2, mr_gain=800.0, mr_bias=0.15, mr_gamma=1.0,
        file_pattern="{:08d}", series_description="t1_vibe_fs_tra_post", field_strength_t=3.0,
        instance_order="ascending",
    ),
    ScannerProfile(
        "Philips Medical Systems", "Ingenia", "MR", "PHILIPS-INGENIA", "Northfield General Hospital", False, 1.0,
        fov_mm=330.0, matrix=112, slice_thickness_mm=6.0, n_slices=(26, 28),
        noise_sigma=0.04, noise_corr_mm=2.0, psf_mm=1.5, mr_gain=3000.0, mr_bias=0.3, mr_gamma=1.15,
        file_pattern="IM_{:04d}", series_description="T1 THRIVE post", field_strength_t=1.5,
        instance_order="shuffled",
    ),
    ScannerProfile(
        "TOSHIBA", "Aquilion ONE", "CT", "AQONE320", "Lakeside Regional Clinic", True, 0.5,
        fov_mm=310.0, matrix=100, slice_thickness_mm=3.0, n_slices=(40, 40),
        noise_sigma=50.0, noise_corr_mm=3.0, psf_mm=2.5, hu_scale=0.95, hu_offset=30.0,
        signed_pixels=False, file_pattern="{:08d}", series_description="Body 3.0 CE",
        instance_order="shuffled",
    ),
    ScannerProfile(
        "GE MEDICAL SYSTEMS", "SIGNA Artist", "MR", "SIGNAARTIST15", "Lakeside Regional Clinic", True, 0.5,
        fov_mm=320.0, matrix=64, slice_thickness_mm=5.0, n_slices=(30, 32),
        noise_sigma=0.07, noise_corr_mm=0.0, psf_mm=3.0, mr_gain=12000.0, mr_bias=0.6, mr_gamma=0.6,
        file_pattern="slice_{}.dcm", series_description="Ax LAVA-Flex post", field_strength_t=1.5,
        instance_order="descending",
    ),
)
