"""MultilingualTextEncoder: byte-level tokenizer + transformer encoder (the seed's ``text_encoder.py``).

The tokenizer covers any language written in UTF-8 with no out-of-vocabulary case: every byte
(0..255) is a token. On top of that, a small vocabulary of video-domain terms (camera moves, shot
types, motion words; :data:`VIDEO_TERMS`) gets one token each, so the frequent words of captions
are one step for the encoder instead of several bytes. Whole words (case-insensitive, ASCII
word boundaries) that are in the vocabulary become that token; everything else is its UTF-8 bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3  # ids 3..258 are the bytes 0..255

# Video-domain vocabulary: one token per term (camera, shot, motion, light, scene words).
VIDEO_TERMS: tuple[str, ...] = tuple(sorted(set("""
camera pan pans panning tilt tilts zoom zooms dolly tracking handheld static aerial drone closeup close-up
wide shot shots scene scenes frame frames slow motion fast timelapse time-lapse cut cuts fade sweep sweeps
rotated rotating rotates spinning moving moves walks walking runs running flies flying falls falling jumps
jumping climbs climbing stands standing sits sitting drives driving rides riding swims swimming dances
dancing person people man men woman women child children crowd animal animals dog cat bird birds horse
rabbit car cars traffic street road bicycle bicycles bike bikes airplane plane propeller train boat water
sea ocean river lake sky cloud clouds sun sunset sunrise night day light lights dark bright shadow shadows
rain snow fog fire smoke tree trees forest grass grassy field hill mountain city building buildings house
room door doorway window gate garden path indoor outdoor black-and-white color colour animated animation
cartoon film footage vintage cinematic portrait landscape background foreground red green blue yellow
white black grey gray orange purple pink brown the a an and of in on at with from to across over under
""".split())))

_WORD = re.compile(r"[A-Za-z][A-Za-z\-]*")


class ByteTokenizer:
    """UTF-8 bytes + :data:`VIDEO_TERMS` word tokens, with BOS/EOS/PAD.

    ``vocab_size = 3 + 256 + len(terms)``. :meth:`encode` never fails on valid text of any
    language; :meth:`decode` inverts it exactly (terms are decoded in their lowercase form only if
    the input was lowercase; otherwise they were kept as bytes).
    """

    def __init__(self, terms: Sequence[str] = VIDEO_TERMS) -> None:
        self.terms = list(terms)
        self.term_ids = {t: BYTE_OFFSET + 256 + i for i, t in enumerate(self.terms)}
        self.vocab_size = BYTE_OFFSET + 256 + len(self.terms)

    def encode(self, text: str, max_length: int = 128) -> list[int]:
        """Token ids ``[BOS, ..., EOS]``, truncated to ``max_length`` (EOS kept)."""
        ids = [BOS]
        pos = 0
        for m in _WORD.finditer(text):
            ids.extend(BYTE_OFFSET + b for b in text[pos:m.start()].encode("utf-8"))
            word = m.group(0)
            tid = self.term_ids.get(word) if word.islower() else None
            if tid is not None:
                ids.append(tid)
            else:
                ids.extend(BYTE_OFFSET + b for b in word.encode("utf-8"))
            pos = m.end()
        ids.extend(BYTE_OFFSET + b for b in text[pos:].encode("utf-8"))
        ids = ids[: max_length - 1] + [EOS]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (special tokens dropped; invalid UTF-8 replaced)."""
        out = bytearray()
        for i in ids:
            if i >= BYTE_OFFSET + 256:
                out.extend(self.terms[i - BYTE_OFFSET - 256].encode("utf-8"))
            elif i >= BYTE_OFFSET:
                out.append(i - BYTE_OFFSET)
        return out.decode("utf-8", errors="replace")

    def batch(self, texts: Sequence[str], max_length: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, mask)``: ``(B, L) int64`` padded with PAD and ``(B, L) bool`` (True = real token)."""
        enc = [self.encode(t, max_length) for t in texts]
        n = max(len(e) for e in enc)
        ids = torch.full((len(enc), n), PAD, dtype=torch.long)
        for i, e in enumerate(enc):
            ids[i, : len(e)] = torch.tensor(e)
        return ids, ids != PAD


class MultilingualTextEncoder(nn.Module):
    """Transformer encoder over :class:`ByteTokenizer` ids.

    Args:
        width: transformer width; layers, heads: its depth and heads.
        embed_dim: output width of the token and pooled embeddings (768 as in the seed).
        max_length: longest token sequence (learned position embeddings).

    ``forward(ids (B, L) int64, mask (B, L) bool)`` -> ``(tokens (B, L, embed_dim) float32,
    pooled (B, embed_dim) float32)``; pooled is the masked mean of the tokens, projected.
    """

    def __init__(self, width: int = 768, layers: int = 12, heads: int = 12, embed_dim: int = 768,
                 max_length: int = 128, dropout: float = 0.0) -> None:
        super().__init__()
        self.tokenizer = ByteTokenizer()
        self.max_length, self.embed_dim = max_length, embed_dim
        self.tok = nn.Embedding(self.tokenizer.vocab_size, width, padding_idx=PAD)
        self.pos = nn.Parameter(torch.zeros(1, max_length, width))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim)
        self.pool_proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        tokens = self.proj(self.norm(x))
        m = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = self.pool_proj((tokens * m).sum(1) / m.sum(1).clamp(min=1))
        return tokens, pooled

    def encode_text(self, texts: Sequence[str], device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Tokenize and encode: ``(tokens (B, L, D), pooled (B, D), mask (B, L) bool)``."""
        ids, mask = self.tokenizer.batch(texts, self.max_length)
        device = device or self.tok.weight.device
        ids, mask = ids.to(device), mask.to(device)
        tokens, pooled = self(ids, mask)
        return tokens, pooled, mask


class PretrainedTextEncoder(nn.Module):
    """A frozen pretrained text encoder from a local ``transformers`` folder (``save_pretrained`` of
    e.g. ``google/umt5-base``, ``google/mt5-base`` or ``xlm-roberta-base``), with its tokenizer.

    Same interface as :class:`MultilingualTextEncoder`'s :meth:`encode_text`. Encoder-decoder models
    (T5 family) use their encoder only. The weights are frozen, never saved in videogen checkpoints
    (the checkpoint records the folder) and kept out of the module tree (no parameters: the
    optimizer, EMA and ``state_dict`` do not see them); each caption is encoded once and cached
    on the CPU (``cache_size`` captions at most, oldest dropped first).

    Args:
        path: the folder (``config.json``, weights, tokenizer files).
        max_length: longest token sequence (longer captions are truncated).

    ``encode_text(texts)`` -> ``(tokens (B, L, hidden) float32, pooled (B, hidden) float32 masked mean,
    mask (B, L) bool)``; ``embed_dim`` = the model's hidden size.

    Raises:
        ValueError: the folder cannot be loaded by ``transformers`` (message names it).
    """

    def __init__(self, path: str, max_length: int = 128, cache_size: int = 100_000) -> None:
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel, AutoTokenizer

            config = AutoConfig.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ValueError(f"--text-encoder {path}: cannot load a transformers model and tokenizer there "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()
        model.requires_grad_(False).eval()
        self.path, self.max_length, self.cache_size = str(path), max_length, cache_size
        self.embed_dim = int(getattr(config, "d_model", None) or config.hidden_size)
        # plain attributes, not submodules: frozen weights stay out of state_dict / parameters()
        object.__setattr__(self, "hf_model", model)
        object.__setattr__(self, "hf_tokenizer", tokenizer)
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def train(self, mode: bool = True) -> PretrainedTextEncoder:
        super().train(mode)
        self.hf_model.eval()  # frozen: dropout stays off
        return self

    @torch.no_grad()
    def _encode_one(self, text: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if text not in self._cache:
            if next(self.hf_model.parameters()).device != device:
                self.hf_model.to(device)
            enc = self.hf_tokenizer([text], max_length=self.max_length, truncation=True, return_tensors="pt")
            out = self.hf_model(input_ids=enc["input_ids"].to(device),
                                attention_mask=enc["attention_mask"].to(device)).last_hidden_state
            if len(self._cache) >= self.cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[text] = (out[0].float().cpu(), enc["attention_mask"][0].bool().cpu())
        return self._cache[text]

    def encode_text(self, texts: Sequence[str], device: torch.device | str | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(tokens (B, L, D), pooled (B, D), mask (B, L) bool)`` on ``device``, padded with zeros."""
        device = torch.device(device or "cpu")
        items = [self._encode_one(t, device if device.type != "meta" else torch.device("cpu")) for t in texts]
        n = max(x.shape[0] for x, _ in items)
        tokens = torch.zeros(len(items), n, self.embed_dim)
        mask = torch.zeros(len(items), n, dtype=torch.bool)
        for i, (x, m) in enumerate(items):
            tokens[i, : x.shape[0]], mask[i, : m.shape[0]] = x, m
        m = mask.unsqueeze(-1).float()
        pooled = (tokens * m).sum(1) / m.sum(1).clamp(min=1)
        return tokens.to(device), pooled.to(device), mask.to(device)
