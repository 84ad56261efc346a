"""Plugin-style stages: sources, mel analysis, vocoder, output.

``STAGE_TYPES`` maps a patch's ``type:`` to a stage class and ``SOURCE_TYPES``
a source's ``type:`` to a source class; both are open for registration.
"""

from .base import Stage, Source, STAGE_TYPES, SOURCE_TYPES, register_stage, register_source
from . import sources as _sources  # noqa: F401  (registers the sources)
from . import mel as _mel  # noqa: F401
from . import vocoder as _vocoder  # noqa: F401
from . import output as _output  # noqa: F401
from . import latentft as _latentft  # noqa: F401
# imported when a patch names it: it needs torch at import time
STAGE_TYPES.setdefault("iffar", "rtengine.stages.iffar:IFFARStage")
from .vocoder import VOCODER_MODELS, register_vocoder

__all__ = ["Stage", "Source", "STAGE_TYPES", "SOURCE_TYPES", "register_stage",
           "register_source", "VOCODER_MODELS", "register_vocoder"]
