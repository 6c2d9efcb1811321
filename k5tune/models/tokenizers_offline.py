"""Real Qwen2 and CLIP tokenizers, built offline with a small trained BPE vocabulary.

The tiny model needs tokenizers of the real classes (so the diffusers pipeline and our encoders run
unchanged) but no download. We train byte-level BPE with the same pre-tokenisation rules as the
originals on a small built-in English corpus; the result is deterministic (the same ids in every process).
"""

from __future__ import annotations

import json

from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import CLIPTokenizer, Qwen2Tokenizer

# Pre-tokenisation patterns of Qwen2 and CLIP (the same rules their tokenizer classes apply).
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CLIP_SPLIT = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CLIP_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]

_CORPUS = """
You are a prompt engineer. Describe the video in detail. Describe how the camera moves or shakes,
describe the zoom and view angle, whether it follows the objects. Describe the location of the video,
main characters or objects and their action. Describe the dynamism of the video and presented actions.
Name the visual style of the video: whether it is a professional footage, user generated content, some
kind of animation, video game or screen content. Describe the visual effects, postprocessing and
transitions if they are presented in the video. Pay attention to the order of key actions shown in the scene.
A red circle moves from left to right across a blue background. A green square bounces up and down.
A yellow triangle spins slowly in the centre. The camera pans right, zooms in, tilts up and follows a
running dog through a field of grass at sunset. A cat sleeps on a sofa while rain falls outside the window.
Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, ugly, deformed,
walking backwards. A person walks along a beach; waves roll in; birds fly over the sea under a cloudy sky.
"""


def _train(pre_tokenizer, normalizer, specials: list[str], vocab_size: int, suffix: str | None):
    model = models.BPE(end_of_word_suffix=suffix) if suffix else models.BPE()
    tokenizer = Tokenizer(model)
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    extra = {"end_of_word_suffix": suffix} if suffix else {}
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        **extra,
    )
    lines = [line.strip() for line in _CORPUS.strip().splitlines()] * 4
    tokenizer.train_from_iterator(lines, trainer)
    state = json.loads(tokenizer.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in state["merges"]]
    return _canonical(state["vocab"], merges, specials)


def _canonical(vocab: dict[str, int], merges: list[tuple[str, str]], specials: list[str]):
    """The same tokens and merges in an order that does not depend on the process: the BPE trainer breaks
    ties between equally frequent pairs in hash order, which differs from one Python process to the next
    (PYTHONHASHSEED), so token ids and the merge order changed between processes. Merges sort by the
    length of what they make, then its text: a merge's parts are shorter than its result, so each part's
    own merge still comes first. Ids: the special tokens, then the base tokens by text, then the merges'
    results in merge order."""
    merges = sorted(merges, key=lambda pair: (len(pair[0] + pair[1]), pair[0] + pair[1], pair[0]))
    made = [a + b for a, b in merges]
    base = sorted(set(vocab) - set(made) - set(specials))
    order = [*specials, *base, *dict.fromkeys(made)]
    return {token: index for index, token in enumerate(order)}, merges


def build_qwen_tokenizer(vocab_size: int = 640) -> Qwen2Tokenizer:
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab, merges = _train(pre, normalizers.NFC(), QWEN_SPECIALS, vocab_size, None)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, additional_special_tokens=QWEN_SPECIALS[1:])


def build_clip_tokenizer(vocab_size: int = 640) -> CLIPTokenizer:
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    vocab, merges = _train(pre, norm, CLIP_SPECIALS, vocab_size, "</w>")
    return CLIPTokenizer(vocab=vocab, merges=merges)
