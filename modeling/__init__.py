"""The files that ship to the Hub beside the weights (loaded there with ``trust_remote_code=True``).

They import each other relatively and nothing else of this repository.
"""

from .configuration_animal_reid import HEAD_DEFAULTS, AnimalReIDConfig
from .image_processing_animal_reid import AnimalReIDImageProcessor, InvalidImageError
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
    "InvalidImageError",
    "MetricLearningOutput",
    "SubCenterArcFaceHead",
    "dynamic_margins",
]
