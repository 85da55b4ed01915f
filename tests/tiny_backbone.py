"""A tiny random Llama with a word-level tokenizer, saved locally, so stage-two tests need no download."""
from __future__ import annotations

from pathlib import Path

WORDS = ("predict the optimal beam index from multi-modal inputs recognize human activity estimate 3d positions "
         "of 17 body keypoints whether line sight will be blocked in near future .").split()


def make_tiny_backbone(folder: Path, layers: int = 4, hidden: int = 64, seed: int = 0) -> Path:
    """The same weights for the same ``seed`` (tests compare numbers of this model from run to run)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{w: i + 3 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, tie_word_embeddings=True)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder
