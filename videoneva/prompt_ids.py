"""Rendered prompt → token ids with media positions, the whole prompt encoded at once as NeMo does.

NeMo (nemo/collections/multimodal/data/neva/neva_dataset.py `preprocess_multimodal` and the
`preprocess_*` functions) replaces the media token with text before tokenizing: START + PATCH × (n − 2)
+ END (`use_im_start_end: false`; the media features then overwrite all n positions) or START + PATCH × n
+ END (`true`; features on the n patch positions, START/END keep their embeddings), and encodes the whole
prompt in one tokenizer call. The v1, llama_2 and mistral templates then rewrite the ids of the patch
token, `<extra_id_6>` and `<extra_id_7>` to 0, 1 and 2 (Llama's <unk>, <s>, </s>).

A tokenizer imported from a `.nemo` carries that recipe as `init_kwargs["nemo_media"]` (kept in its
tokenizer_config.json); any other tokenizer has the media token as one token of its own, and the prompt
is encoded whole around it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional

from videoneva.errors import PromptError

MEDIA_TOKENS = {"image": "<image>", "video": "<video>"}
MEDIA_RE = re.compile("|".join(re.escape(t) for t in MEDIA_TOKENS.values()))
IGNORE_INDEX = -100  # labels of positions without loss (NeMo uses -1; -100 is what torch/transformers ignore)

# conversation.py DEFAULT_IM_START_TOKEN / DEFAULT_IMAGE_PATCH_TOKEN / DEFAULT_IM_END_TOKEN per model_type.
_MARKERS = {"llama_3": ("<|reserved_special_token_4|>", "<|reserved_special_token_3|>", "<|reserved_special_token_5|>")}
_DEFAULT_MARKERS = ("<extra_id_4>", "<extra_id_3>", "<extra_id_5>")
REMAP_TEMPLATES = ("v1", "llama_2", "mistral")  # neva_dataset.py preprocess_v1 / preprocess_llama_2


def nemo_media_spec(model_type: Optional[str], use_im_start_end: bool, template: Optional[str]) -> dict:
    """NeMo's media expansion for a model (mm_cfg.llm.model_type, mm_cfg.use_im_start_end, data.conv_template)."""
    start, patch, end = _MARKERS.get(model_type or "", _DEFAULT_MARKERS)
    remap = {patch: 0, "<extra_id_6>": 1, "<extra_id_7>": 2} if template in REMAP_TEMPLATES else {}
    return {"start": start, "patch": patch, "end": end, "im_start_end": bool(use_im_start_end), "id_remap": remap}


def media_spec_of(tokenizer) -> Optional[dict]:
    """The `nemo_media` recipe a tokenizer carries, or None."""
    spec = (getattr(tokenizer, "init_kwargs", None) or {}).get("nemo_media")
    return spec if isinstance(spec, dict) and spec.get("patch") else None


def single_token_id(tokenizer, token: str) -> Optional[int]:
    """The id of `token` when encoding the text `token` yields that id (a SentencePiece tokenizer may put its
    dummy "▁" first), else None."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if tid is None or tid == tokenizer.unk_token_id:
        return None
    return tid if _encode(tokenizer, token, False)[0].count(tid) == 1 else None


@dataclass
class TokenizedPrompt:
    """Token ids of a prompt with its media positions; labels only when loss spans were given."""

    input_ids: list[int]
    media_positions: list[int] = field(default_factory=list)  # indices into input_ids, contiguous
    labels: Optional[list[int]] = None                         # same length as input_ids; IGNORE_INDEX = no loss


def _encode(tokenizer, text: str, offsets: bool) -> tuple[list[int], Optional[list[tuple[int, int]]]]:
    if hasattr(tokenizer, "encode_with_offsets"):  # videoneva's NeMo SentencePiece tokenizer
        ids, spans = tokenizer.encode_with_offsets(text)
        return ids, spans if offsets else None
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=offsets)
    return list(enc["input_ids"]), enc.get("offset_mapping") if offsets else None


def _nemo_run(ids: list[int], spec: dict, marker_ids: tuple, k: int) -> int:
    """Index of START in the START + PATCH × k + END run of ids."""
    start_id, patch_id, end_id = marker_ids
    for i, t in enumerate(ids):
        if t == start_id and i + k + 1 < len(ids) and ids[i + k + 1] == end_id and \
                all(x == patch_id for x in ids[i + 1:i + k + 1]):
            return i
    raise PromptError(f"the tokenizer did not keep NeMo's media tokens {spec['start']} / {spec['patch']} / "
                      f"{spec['end']} whole; it cannot encode NeMo prompts")


def tokenize_with_media(tokenizer, prompt: str, num_media_tokens: int, media_token_id: int, add_bos: bool,
                        spans: Optional[list[tuple[int, int]]] = None) -> TokenizedPrompt:
    """Encode the whole prompt in one call and put num_media_tokens media ids where its media token stood.

    A prompt holds one media item at most: more than one <image>/<video> token is an error, as is a
    media item without a token (set insert_media_token) or a token without a media item. The media
    token becomes NeMo's START/PATCH/END text for a tokenizer imported from a `.nemo` (see the module
    docstring), else it must be one token of the tokenizer; a tokenizer without it gets the text on
    each side of it encoded separately.

    Args:
        tokenizer: a transformers tokenizer (fast, or videoneva's NeMo SentencePiece one).
        prompt: rendered text.
        num_media_tokens: positions of the media item (see prompts.num_media_tokens()); 0 = no media.
        media_token_id: id written at media positions (callers may swap them for fake ids).
        add_bos: prepend the tokenizer's BOS id, unless the text already starts with the BOS token
            (mistral, llama_3 carry their own).
        spans: character spans of the prompt that carry loss; labels are then the ids inside a span
            (a token that overlaps a span, e.g. " red" for an answer "red") and IGNORE_INDEX elsewhere.
    """
    found = list(MEDIA_RE.finditer(prompt))
    if len(found) > 1:
        raise PromptError(f"more media tokens than media items: the prompt holds {len(found)} media tokens "
                          f"({', '.join(m.group() for m in found)}) and one media item is supported per prompt")
    if num_media_tokens and not found:
        raise PromptError("the prompt has no <video>/<image> token for its media; put one in the text or set "
                          "inference.insert_media_token=left|right (the NeMo infer job uses a question as given "
                          "when inference.insert_media_token is null, as NeMo's neva_evaluation.py does)")
    if found and not num_media_tokens:
        raise PromptError(f"the prompt holds {found[0].group()} but its line has no media (0 media positions)")
    spec = media_spec_of(tokenizer)
    media = found[0] if found else None
    own_id = single_token_id(tokenizer, media.group()) if media and spec is None else None
    if media and spec is None and own_id is None:
        return _tokenize_around(tokenizer, prompt, media, num_media_tokens, media_token_id, add_bos, spans)
    text, grow = prompt, 0
    if media and spec:
        k = num_media_tokens if spec["im_start_end"] else num_media_tokens - 2
        if k < 0:
            raise PromptError(f"NeMo's media expansion needs at least 2 media positions, got {num_media_tokens}")
        expansion = spec["start"] + spec["patch"] * k + spec["end"]
        text, grow = prompt[:media.start()] + expansion + prompt[media.end():], len(expansion) - len(media.group())
    ids, offsets = _encode(tokenizer, text, spans is not None)
    positions: list[int] = []
    if media and spec:
        markers = tuple(tokenizer.convert_tokens_to_ids([spec[k] for k in ("start", "patch", "end")]))
        at = _nemo_run(ids, spec, markers, k) + (1 if spec["im_start_end"] else 0)
        positions = list(range(at, at + num_media_tokens))
    elif media:
        at = ids.index(own_id)
        ids[at:at + 1] = [own_id] * num_media_tokens
        if offsets is not None:
            offsets[at:at + 1] = [offsets[at]] * num_media_tokens
        positions = list(range(at, at + num_media_tokens))
    remap = {tokenizer.convert_tokens_to_ids(t): v for t, v in ((spec or {}).get("id_remap") or {}).items()}
    if remap:
        ids = [remap.get(t, t) for t in ids]
    for p in positions:
        ids[p] = media_token_id
    labels = None
    if spans is not None:  # offsets after the expansion move back by `grow` into prompt coordinates
        cut, media_at = (media.end() + grow if media else len(text)), set(positions)
        back = [(a - grow if a >= cut else a, b - grow if b > cut else b) for a, b in offsets]
        labels = [IGNORE_INDEX if i in media_at or not _overlaps(ab, spans) else t
                  for i, (t, ab) in enumerate(zip(ids, back))]
    return _with_bos(tokenizer, prompt, add_bos, TokenizedPrompt(ids, positions, labels))


def _overlaps(ab: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    return any(ab[0] < e and ab[1] > s for s, e in spans)


def _with_bos(tokenizer, prompt: str, add_bos: bool, tp: TokenizedPrompt) -> TokenizedPrompt:
    bos = getattr(tokenizer, "bos_token", None)
    if not add_bos or (bos and prompt.startswith(bos)):
        return tp
    if tokenizer.bos_token_id is None:
        raise PromptError("inference.add_BOS=true but the tokenizer has no BOS token")
    labels = None if tp.labels is None else [IGNORE_INDEX] + tp.labels
    return TokenizedPrompt([tokenizer.bos_token_id] + tp.input_ids, [p + 1 for p in tp.media_positions], labels)


def _tokenize_around(tokenizer, prompt: str, media: re.Match, n: int, media_token_id: int, add_bos: bool,
                     spans: Optional[list[tuple[int, int]]]) -> TokenizedPrompt:
    """For a tokenizer without the media token: the text on each side encoded on its own."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for k, (start, end) in enumerate([(0, media.start()), (media.end(), len(prompt))]):
        if k == 1:
            positions = list(range(len(ids), len(ids) + n))
            ids.extend([media_token_id] * n)
            labels.extend([IGNORE_INDEX] * n)
        if start == end:
            continue
        part, offsets = _encode(tokenizer, prompt[start:end], spans is not None)
        ids.extend(part)
        if spans is not None:
            labels.extend(t if _overlaps((a + start, b + start), spans) else IGNORE_INDEX
                          for t, (a, b) in zip(part, offsets))
    return _with_bos(tokenizer, prompt, add_bos, TokenizedPrompt(ids, positions, labels if spans is not None else None))
