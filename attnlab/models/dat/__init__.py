from transformers import AutoImageProcessor, AutoModelForImageClassification, AutoModelForSeq2SeqLM

from ...layers.dual_attention import DATCache, DualAttention
from ..registry import Family, register_model_kind
from .configuration_dat import PRESETS, DATConfig
from .configuration_dat_seq2seq import PRESETS as SEQ2SEQ_PRESETS
from .configuration_dat_seq2seq import DATSeq2SeqConfig
from .configuration_dat_vision import PRESETS as VISION_PRESETS
from .configuration_dat_vision import DATVisionConfig
from .image_processing_dat import DATImageProcessor
from .modeling_dat import DATForCausalLM
from .modeling_dat_seq2seq import DATForSeq2SeqLM
from .modeling_dat_vision import DATForImageClassification

FAMILY = Family(
    name="dat",
    config_class=DATConfig,
    model_class=DATForCausalLM,
    presets=PRESETS,
    description="Dual Attention Transformer: self-attention + relational heads with symbol retrieval",
)

# DAT beyond causal LMs: model kinds, not families (the families are the causal LMs).
SEQ2SEQ = Family(
    name="dat-seq2seq",
    config_class=DATSeq2SeqConfig,
    model_class=DATForSeq2SeqLM,
    presets=SEQ2SEQ_PRESETS,
    description="sequence-to-sequence DAT: dual-attention encoder, decoder with cross-attention",
)
VISION = Family(
    name="dat-vision",
    config_class=DATVisionConfig,
    model_class=DATForImageClassification,
    presets=VISION_PRESETS,
    description="vision DAT (ViDAT): patches, CLS token, dual-attention encoder, classifier",
)
register_model_kind(SEQ2SEQ, AutoModelForSeq2SeqLM)
register_model_kind(VISION, AutoModelForImageClassification)
AutoImageProcessor.register(DATVisionConfig, image_processor_classes={"pil": DATImageProcessor}, exist_ok=True)

__all__ = [
    "FAMILY",
    "SEQ2SEQ",
    "VISION",
    "DATCache",
    "DATConfig",
    "DATForCausalLM",
    "DATForImageClassification",
    "DATForSeq2SeqLM",
    "DATImageProcessor",
    "DATSeq2SeqConfig",
    "DATVisionConfig",
    "DualAttention",
]
