"""Parameter-efficient tuning (PET) of PyTorch models, and merging it back.

``apply`` wraps linear layers with a method (LoRA, Bone/MiSS, bone-bat, adapter,
VL-PET gating, k-bit adapters); ``merge``/``unmerge`` fold updates in and out of the
base weights; ``binarize`` freezes k-bit adapters into packed codes; ``LAE`` tunes
across a task sequence; ``load_peft`` reads Hugging Face PEFT adapters. See docs/pet.md.
"""

from edgepet.pet.adapter import AdapterConfig, AdapterLinear
from edgepet.pet.bone import BoneBatLinear, BoneConfig, BoneLinear
from edgepet.pet.gating import GatedAdapterLinear, GatingConfig
from edgepet.pet.lae import LAE
from edgepet.pet.layer import NotMergeable, PetError, PetLayer
from edgepet.pet.lora import LoraConfig, LoraLinear
from edgepet.pet.lowbit import LowBitMatrix, PackedMatrix, gaussian_codebook
from edgepet.pet.model import (
    METHODS,
    ApplyReport,
    MergeReport,
    StorageReport,
    apply,
    binarize,
    merge,
    output_head,
    pet_layers,
    stored_bytes,
    unload,
    unmerge,
)
from edgepet.pet.peft import load_peft

__all__ = [
    "LAE",
    "METHODS",
    "AdapterConfig",
    "AdapterLinear",
    "ApplyReport",
    "BoneBatLinear",
    "BoneConfig",
    "BoneLinear",
    "GatedAdapterLinear",
    "GatingConfig",
    "LoraConfig",
    "LoraLinear",
    "LowBitMatrix",
    "MergeReport",
    "NotMergeable",
    "PackedMatrix",
    "PetError",
    "PetLayer",
    "StorageReport",
    "apply",
    "binarize",
    "gaussian_codebook",
    "load_peft",
    "merge",
    "output_head",
    "pet_layers",
    "stored_bytes",
    "unload",
    "unmerge",
]
