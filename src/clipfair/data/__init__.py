"""Face datasets: adapters (``load_dataset``), the FaceDataset object and label constants.

Layer: data.
"""

from .adapters import DATASETS, ON_ERROR, UTKFACE_RACES, HFReader, load_dataset
from . import counterfactual_layouts  # noqa: F401  (registers social_counterfactuals, pairs)
from . import facet  # noqa: F401  (registers facet)
from . import geo_layouts  # noqa: F401  (registers dollar_street, geode)
from .attributes import (
    AGE_BINS,
    FAIRFACE_ATTRIBUTES,
    FAIRFACE_ORDERS,
    FAIRFACE_PLOT_SLICES,
    FAIRFACE_SLICES,
    RACE_BINARY_ATTRIBUTE,
    Attribute,
    AttributeDeclarationError,
    DerivedAttribute,
    parse_attributes,
    parse_derived,
    ATTRIBUTES,
    CANONICAL,
    GENDERS,
    RACE_BINARY,
    RACES,
    LabelError,
    age_to_bin,
    normalize_value,
    race_binary,
)
from .base import DatasetError, FaceDataset, FileReader, SliceError
from .images import ImageError

__all__ = [
    "AGE_BINS",
    "FAIRFACE_ATTRIBUTES",
    "FAIRFACE_ORDERS",
    "FAIRFACE_PLOT_SLICES",
    "FAIRFACE_SLICES",
    "RACE_BINARY_ATTRIBUTE",
    "Attribute",
    "AttributeDeclarationError",
    "DerivedAttribute",
    "SliceError",
    "parse_attributes",
    "parse_derived",
    "ATTRIBUTES",
    "CANONICAL",
    "DATASETS",
    "GENDERS",
    "ON_ERROR",
    "RACES",
    "RACE_BINARY",
    "UTKFACE_RACES",
    "DatasetError",
    "FaceDataset",
    "FileReader",
    "HFReader",
    "ImageError",
    "LabelError",
    "age_to_bin",
    "load_dataset",
    "normalize_value",
    "race_binary",
]
