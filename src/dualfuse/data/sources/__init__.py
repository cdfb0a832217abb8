"""One reader per on-disk format, each a `CaseDataset` subclass."""
from dualfuse.data.sources.dicom import WINDOW_PRESETS, DicomDataset, read_dicom
from dualfuse.data.sources.files import FileListDataset, expand_inputs
from dualfuse.data.sources.folders import ImageFolderDataset, read_pil
from dualfuse.data.sources.manifest import FileReader, ManifestDataset
from dualfuse.data.sources.medmnist import MedMNISTDataset
from dualfuse.data.sources.nifti import NiftiDataset, read_nifti_slice

__all__ = [
    "WINDOW_PRESETS",
    "DicomDataset",
    "FileListDataset",
    "FileReader",
    "ImageFolderDataset",
    "ManifestDataset",
    "MedMNISTDataset",
    "NiftiDataset",
    "expand_inputs",
    "read_dicom",
    "read_nifti_slice",
    "read_pil",
]
