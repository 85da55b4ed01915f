"""One encoder per modality, each giving ``n_f`` tokens of width ``d`` and a pooled embedding (Eq. 7)."""
from encoders.base import EncoderConfig, EncoderOutput, build_encoder, registered

__all__ = ["EncoderConfig", "EncoderOutput", "build_encoder", "registered"]
