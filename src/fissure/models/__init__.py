"""Model families. Each family registers its class and config under a name.

Config field names follow one rule: a concept that nanoGPT's GPT has keeps nanoGPT's name
(``vocab_size``, ``block_size`` for the context length, ``n_layer``, ``n_head``, ``n_embd``,
``tie_weights``, ``bias``, ``dropout``; ``n_kv_head`` joins that ``n_*`` family), and only a
concept nanoGPT lacks takes HF's name (``intermediate_size``, ``rms_norm_eps``, ``rope_theta``,
``head_dim``, ``bos_token_id``, ``eos_token_id``, BERT's ``type_vocab_size``,
``pad_token_id``). So HF's ``max_position_embeddings`` is our
``block_size`` and HF's ``tie_word_embeddings`` is our ``tie_weights``. HF's names appear only
where HF-format files are read or written: the loaders (:mod:`.hf_llama`'s ``config_from_hf``
and ``config_to_hf``, :mod:`.gguf`) translate in both directions.
"""

from .bert import Bert, BertConfig
from .gpt import GPT, GPTConfig
from .llama import Llama, LlamaConfig
from .lstm import LSTM, LSTMConfig
from .seq2seq import Seq2Seq, Seq2SeqConfig

MODEL_FAMILIES: dict[str, tuple[type, type]] = {"gpt": (GPT, GPTConfig), "llama": (Llama, LlamaConfig),
                                                "bert": (Bert, BertConfig), "lstm": (LSTM, LSTMConfig),
                                                "seq2seq": (Seq2Seq, Seq2SeqConfig)}

__all__ = ["Bert", "BertConfig", "GPT", "GPTConfig", "LSTM", "LSTMConfig", "Llama", "LlamaConfig", "MODEL_FAMILIES",
           "Seq2Seq", "Seq2SeqConfig"]
