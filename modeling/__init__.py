"""The files that ship to the Hub beside the weights (loaded there with ``trust_remote_code=True``).

They import each other relatively and nothing else of this repository.
"""

from .boxes_animal_reid import InvalidBoxError, InvalidImageError, displayed_size
from .configuration_animal_reid import HEAD_DEFAULTS, AnimalReIDConfig
from .image_processing_animal_reid import AnimalReIDImageProcessor
from .modeling_animal_reid import (
    AnimalReIDForMetricLearning,
    AnimalReIDModel,
    AnimalReIDOutput,
    GeM,
    MetricLearningOutput,
    SubCenterArcFaceHead,
    dynamic_margins,
)

AnimalReIDConfig.register_for_auto_class()
AnimalReIDModel.register_for_auto_class("AutoModel")
AnimalReIDImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "HEAD_DEFAULTS",
    "AnimalReIDConfig",
    "AnimalReIDForMetricLearning",
    "AnimalReIDImageProcessor",
    "AnimalReIDModel",
    "AnimalReIDOutput",
    "GeM",
    "InvalidBoxError",
    "InvalidImageError",
    "MetricLearningOutput",
    "SubCenterArcFaceHead",
    "displayed_size",
    "dynamic_margins",
]
