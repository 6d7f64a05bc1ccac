"""Note tokenisation: a local Hugging Face tokenizer, or a generated word vocabulary.

Two sources, one interface (a ``transformers`` fast tokenizer):

* ``TextConfig.pretrained_dir`` set: ``AutoTokenizer.from_pretrained(dir,
  local_files_only=True)``; nothing is fetched from a hub.
* otherwise: a word-level tokenizer over a vocabulary generated from the training notes
  (:func:`build_word_vocab`), lower-cased, BERT pre-tokenisation, ``[CLS] ... [SEP]``.
  The vocabulary is stored in the checkpoint.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
_WORD = re.compile(r"\w+|[^\w\s]")


def build_word_vocab(texts: Iterable[str], min_count: int = 1, max_size: int = 5000) -> list[str]:
    """A word vocabulary from example texts, special tokens first.

    Args:
        texts: Training notes.
        min_count: Minimum occurrences for a word to be kept. Defaults to 1.
        max_size: Maximum vocabulary size including special tokens. Defaults to 5000.

    Returns:
        The vocabulary, index = token id.
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(_WORD.findall(text.lower()))
    words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return list(SPECIAL_TOKENS) + words[: max_size - len(SPECIAL_TOKENS)]


def word_tokenizer(vocab: list[str]) -> Any:
    """A ``transformers`` fast tokenizer over a word vocabulary from :func:`build_word_vocab`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pad, unknown, cls, sep = SPECIAL_TOKENS
    core = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(vocab)}, unk_token=unknown))
    core.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core,
        pad_token=pad,
        unk_token=unknown,
        cls_token=cls,
        sep_token=sep,
    )


def pretrained_tokenizer(directory: str) -> Any:
    """The tokenizer of a local Hugging Face model directory (never fetched from a hub)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


def encode_notes(
    tokenizer: Any, notes: list[tuple[str, float]], max_tokens: int
) -> tuple[list[int], list[float]]:
    """Token ids of a patient's notes, most recent note first.

    The sequence is ``[CLS] note_1 [SEP] note_2 [SEP] ...``, truncated to ``max_tokens``
    (the last kept token is always ``[SEP]``).

    Args:
        tokenizer: A transformers tokenizer with ``cls_token_id`` and ``sep_token_id``.
        notes: (text, relative_seconds) pairs, any order.
        max_tokens: Maximum sequence length, at least 2.

    Returns:
        (ids, times): token ids and, per token, the relative time of its note in seconds
        (0 for ``[CLS]``).
    """
    ids: list[int] = [int(tokenizer.cls_token_id)]
    times: list[float] = [0.0]
    for text, seconds in sorted(notes, key=lambda n: -n[1]):
        room = max_tokens - len(ids) - 1
        if room <= 0:
            break
        body = tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"][:room]
        ids += [*body, int(tokenizer.sep_token_id)]
        times += [float(seconds)] * (len(body) + 1)
    if len(ids) == 1:
        ids.append(int(tokenizer.sep_token_id))
        times.append(0.0)
    return ids, times
