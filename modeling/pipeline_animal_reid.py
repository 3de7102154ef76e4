"""How ``pipeline("image-feature-extraction")`` hands its inputs to the re-ID image processor.

Part of the remote code that ships beside the weights (imported relatively by
``image_processing_animal_reid.py``, so ``save_pretrained`` copies it into every export). The processor calls
:func:`route_pipeline_loading` when it is built and when it is called: transformers'
``ImageFeatureExtractionPipeline.preprocess`` is then wrapped, once per process, so that the pipeline loads
images through the processor's validated loader.
"""

from __future__ import annotations

import sys


def route_pipeline_loading() -> None:
    """Let ``pipeline("image-feature-extraction")`` load images through the re-ID processor's loader.

    transformers' pipeline decodes each input with its own ``load_image`` before calling the processor, so a
    bad file raised a raw ``OSError`` there. Its ``preprocess`` is wrapped, once per process, to hand inputs
    to ``AnimalReIDImageProcessor.load_pipeline_input`` when the pipeline's processor has that method (any
    copy of ``image_processing_animal_reid.py``, e.g. the one loaded as remote code); every other pipeline runs
    transformers' code unchanged. Nothing is done until transformers' pipelines are imported, nor if
    ``preprocess`` has another signature.
    """
    module = sys.modules.get("transformers.pipelines.image_feature_extraction")
    cls = getattr(module, "ImageFeatureExtractionPipeline", None)
    original = getattr(cls, "preprocess", None)
    if original is None or getattr(original, "_routes_to_processor", False):
        return
    try:
        import inspect

        params = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return
    if params[:3] != ["self", "image", "timeout"]:
        return

    def preprocess(self, image, timeout=None, **image_processor_kwargs):
        load = getattr(self.image_processor, "load_pipeline_input", None)
        if load is None:
            return original(self, image, timeout=timeout, **image_processor_kwargs)
        model_inputs = self.image_processor(
            load(image, timeout=timeout), return_tensors="pt", **image_processor_kwargs
        )
        return model_inputs.to(self.dtype)

    preprocess._routes_to_processor = True
    preprocess.__doc__ = original.__doc__
    preprocess.__wrapped__ = original
    cls.preprocess = preprocess
