# Copyright 2026 the peft-mft authors.
# SPDX-License-Identifier: Apache-2.0
"""LLaVA instruction data: reading and checking the JSON, turning a record into tokens, batching.

A data file is a JSON list (or JSON Lines) of records in the LLaVA format::

    {"id": "000123", "image": "images/123.png",
     "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the shape?"},
                       {"from": "gpt", "value": "blue"}, ...]}

``image`` is relative to the image folder; ``<image>`` marks where the image tokens go (prepended to the first
human turn when absent, as LLaVA does). Every problem is reported as a `DataFormatError` that names the file and
the record (index and id).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jinja2 import TemplateError
from PIL import Image, UnidentifiedImageError

from .images import ImagePreprocessor


IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
ROLE_NAMES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class DataFormatError(ValueError):
    """A data file or record that cannot be used; the message names the file and the record."""


@dataclass
class Record:
    """One conversation. ``turns`` holds (role, text) with roles "system" | "user" | "assistant"."""

    index: int
    id: str | None
    image: Path | None
    turns: list[tuple[str, str]]
    source: str = ""

    def describe(self) -> str:
        ident = f", id={self.id!r}" if self.id is not None else ""
        return f"{self.source}: record #{self.index}{ident}"


# ---------------------------------------------------------------------------------------------------------------
# Reading and checking a data file
# ---------------------------------------------------------------------------------------------------------------


def _iter_raw_records(path: Path):
    """Yield (index, parsed record) from a JSON list or JSON Lines file, naming the record on a syntax error."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if not stripped:
        raise DataFormatError(f"{path}: the file is empty; expected a JSON list of LLaVA records")

    def where(pos: int) -> str:
        line = text.count("\n", 0, pos) + 1
        return f"line {line}, column {pos - text.rfind(chr(10), 0, pos)}"

    def guess_id(start: int) -> str:
        match = re.search(r'"id"\s*:\s*"?([^",}\n]*)', text[start : start + 2000])
        return f", id={match.group(1)!r}" if match else ""

    decoder = json.JSONDecoder()
    if stripped[0] != "[":  # JSON Lines
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                yield line_no - 1, json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(
                    f"{path}: malformed JSON in record on line {line_no}{guess_id(text.find(line))}: {err.msg} "
                    f"(column {err.colno})"
                ) from None
        return

    pos = text.index("[") + 1
    index = 0
    ws = re.compile(r"\s*")
    while True:
        pos = ws.match(text, pos).end()
        if pos >= len(text):
            raise DataFormatError(f"{path}: malformed JSON: the list is not closed with ']' after record #{index - 1}")
        if text[pos] == "]":
            return
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raise DataFormatError(
                f"{path}: malformed JSON in record #{index}{guess_id(pos)} (starting at {where(pos)}): "
                f"{err.msg} at {where(err.pos)}"
            ) from None
        yield index, obj
        index += 1
        pos = ws.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise DataFormatError(
                f"{path}: malformed JSON after record #{index - 1}{guess_id(end)}: expected ',' or ']' at {where(pos)}"
            )


def _check_record(raw, index: int, path: Path, image_folder: Path | None, check_images: bool) -> Record:
    label = f"{path}: record #{index}"
    if not isinstance(raw, dict):
        raise DataFormatError(f"{label}: expected a JSON object, got {type(raw).__name__}")
    rid = raw.get("id")
    rid = None if rid is None else str(rid)
    if rid is not None:
        label += f", id={rid!r}"
    convs = raw.get("conversations")
    if convs is None:
        raise DataFormatError(f"{label}: has no 'conversations' list")
    if not isinstance(convs, list) or not convs:
        raise DataFormatError(f"{label}: 'conversations' is empty; it needs at least a human turn and a gpt turn")
    turns: list[tuple[str, str]] = []
    for t, turn in enumerate(convs):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataFormatError(f"{label}: turn {t} must be an object with 'from' and 'value', got {turn!r:.80}")
        role = ROLE_NAMES.get(str(turn["from"]).lower())
        if role is None:
            raise DataFormatError(
                f"{label}: turn {t} has from={turn['from']!r}; expected one of {sorted(ROLE_NAMES)}"
            )
        value = turn["value"]
        if not isinstance(value, str) or (role != "system" and not value.strip()):
            raise DataFormatError(f"{label}: turn {t} ({turn['from']}) has an empty or non-string 'value'")
        turns.append((role, value))
    body = turns[1:] if turns[0][0] == "system" else turns
    if not body:
        raise DataFormatError(f"{label}: 'conversations' holds only a system turn")
    for t, (role, _) in enumerate(body):
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise DataFormatError(
                f"{label}: turns must alternate human, gpt, human, ...; turn {t + len(turns) - len(body)} is "
                f"{role!r} where {expected!r} was expected"
            )
    if body[-1][0] != "assistant":
        raise DataFormatError(f"{label}: the last human turn has no gpt answer")

    n_placeholders = sum(text.count(IMAGE_PLACEHOLDER) for _, text in turns)
    image = raw.get("image")
    image_path = None
    if image is not None:
        if not isinstance(image, str) or not image:
            raise DataFormatError(f"{label}: 'image' must be one file name (multi-image records are not supported)")
        if n_placeholders > 1:
            raise DataFormatError(f"{label}: {n_placeholders} '{IMAGE_PLACEHOLDER}' markers for one image")
        image_path = (image_folder / image) if image_folder is not None else Path(image)
        if check_images and not image_path.is_file():
            raise DataFormatError(f"{label}: image file not found: {image_path}")
        if n_placeholders == 0:  # LLaVA convention: the image goes before the first question
            first_user = next(i for i, (role, _) in enumerate(turns) if role == "user")
            turns[first_user] = ("user", IMAGE_PLACEHOLDER + "\n" + turns[first_user][1])
    elif n_placeholders:
        raise DataFormatError(f"{label}: the text contains '{IMAGE_PLACEHOLDER}' but the record has no 'image'")
    return Record(index=index, id=rid, image=image_path, turns=turns, source=str(path))


def load_llava_json(
    path: str | Path, image_folder: str | Path | None = None, check_images: bool = True, limit: int | None = None
) -> list[Record]:
    """Read and check a LLaVA-format data file. Images are checked to exist (not decoded) unless
    ``check_images=False``. Raises `DataFormatError` naming the record at the first problem."""
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(f"data file not found: {path}")
    folder = Path(image_folder) if image_folder is not None else path.parent
    records = []
    for index, raw in _iter_raw_records(path):
        records.append(_check_record(raw, index, path, folder, check_images))
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataFormatError(f"{path}: no records")
    return records


# ---------------------------------------------------------------------------------------------------------------
# Record -> tokens
# ---------------------------------------------------------------------------------------------------------------


class VLMProcessor:
    """Turns records into model inputs with the model's chat template.

    - ``input_ids`` carry ``num_image_tokens`` copies of ``image_token_id`` where the image goes (what
      `LlavaForConditionalGeneration` expects);
    - ``labels`` are -100 everywhere except the assistant answers (and the end-of-turn token after each);
    - images go through ``image_preprocessor`` (PIL + numpy).
    """

    def __init__(
        self,
        tokenizer,
        image_preprocessor: ImagePreprocessor,
        image_token_id: int,
        num_image_tokens: int,
        chat_template: str | None = None,
        max_length: int | None = None,
    ):
        self.tokenizer = tokenizer
        self.image_preprocessor = image_preprocessor
        self.image_token_id = int(image_token_id)
        self.image_token = tokenizer.convert_ids_to_tokens(self.image_token_id)
        self.num_image_tokens = int(num_image_tokens)
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template; pass one with --chat-template FILE")
        self.max_length = max_length
        self.eos_token = tokenizer.eos_token
        self.eos_token_id = tokenizer.eos_token_id
        self._content_style = self._detect_content_style()
        probe = tokenizer("a", add_special_tokens=True).input_ids
        bos = tokenizer.bos_token_id
        self._bos_id = bos if bos is not None and probe[:1] == [bos] else None

    # -- chat template -----------------------------------------------------------------------------------------

    def _detect_content_style(self) -> str:
        """"text": the template takes message content as a string (tokenizer templates);
        "parts": as a list of {"type": "image"|"text"} parts (processor templates such as llava-hf's)."""
        sentinel = "zq_probe_qz"
        try:
            out = self._apply([{"role": "user", "content": sentinel}], False, style="text")
            if sentinel in out:
                return "text"
        except (TemplateError, TypeError):  # the template cannot render string content: not this style
            pass
        out = self._apply([{"role": "user", "content": sentinel}], False, style="parts")
        if sentinel not in out:
            raise ValueError("the chat template renders neither string nor list-of-parts message content")
        return "parts"

    def _apply(self, messages, add_generation_prompt: bool, style: str | None = None) -> str:
        style = style or self._content_style
        if style == "parts":
            converted = []
            for m in messages:
                text = m["content"]
                parts = []
                if IMAGE_PLACEHOLDER in text:
                    parts.append({"type": "image"})
                    text = text.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
                parts.append({"type": "text", "text": text})
                converted.append({"role": m["role"], "content": parts})
            messages = converted
        else:
            messages = [{"role": m["role"], "content": m["content"].replace(IMAGE_PLACEHOLDER, self.image_token)}
                        for m in messages]
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _tokenize(self, text: str) -> list[int]:
        """Tokenise rendered text, expanding each image token to ``num_image_tokens`` ids."""
        pieces = text.split(self.image_token)
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False).input_ids)
            if i < len(pieces) - 1:
                ids.extend([self.image_token_id] * self.num_image_tokens)
        return ids

    def _segments(self, record: Record):
        """Yield (text, is_answer) pieces of the rendered conversation, in order."""
        messages = [{"role": role, "content": text} for role, text in record.turns]
        rendered = ""
        for i, (role, _) in enumerate(record.turns):
            if role != "assistant":
                continue
            prompt = self._apply(messages[:i], add_generation_prompt=True)
            full = self._apply(messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(rendered) or not full.startswith(prompt):
                raise DataFormatError(
                    f"{record.describe()}: the chat template does not render turn {i} as a continuation of the "
                    "earlier turns, so answer tokens cannot be located; pass a simpler --chat-template"
                )
            yield prompt[len(rendered):], False
            answer = full[len(prompt):]
            if self.eos_token and self.eos_token in answer:
                cut = answer.index(self.eos_token) + len(self.eos_token)
                yield answer[:cut], True
                if answer[cut:]:
                    yield answer[cut:], False
            else:
                yield answer, True
                yield None, True  # the template ends no turn with EOS: append it so generation learns to stop
            rendered = full

    def _bos(self, rendered: str) -> list[int]:
        """[BOS] when the tokenizer adds one by default and the template did not write it already."""
        if self._bos_id is None or rendered.startswith(self.tokenizer.bos_token):
            return []
        return [self._bos_id]

    def encode_training(self, record: Record) -> dict:
        """-> {"input_ids": LongTensor (L,), "labels": LongTensor (L,)} with labels only on answers."""
        ids: list[int] = []
        labels: list[int] = []
        for n, (text, is_answer) in enumerate(self._segments(record)):
            if n == 0:
                ids = self._bos(text)
                labels = [IGNORE_INDEX] * len(ids)
            piece = [self.eos_token_id] if text is None else self._tokenize(text)
            ids.extend(piece)
            labels.extend(piece if is_answer else [IGNORE_INDEX] * len(piece))
        ids, labels = self._truncate(record, ids, labels)
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def encode_prompts(self, record: Record) -> list[tuple[list[int], str]]:
        """One (prompt ids, reference answer) per assistant turn, the prompt holding the true earlier turns."""
        messages = [{"role": role, "content": text} for role, text in record.turns]
        out = []
        for i, (role, text) in enumerate(record.turns):
            if role == "assistant":
                prompt = self._apply(messages[:i], add_generation_prompt=True)
                ids = self._bos(prompt) + self._tokenize(prompt)
                out.append((self._truncate(record, ids, None)[0], text))
        return out

    def _truncate(self, record: Record, ids: list[int], labels: list[int] | None):
        expected = self.num_image_tokens if record.image is not None else 0
        if ids.count(self.image_token_id) != expected:
            raise DataFormatError(
                f"{record.describe()}: the chat template produced {ids.count(self.image_token_id)} image tokens, "
                f"expected {expected}"
            )
        if self.max_length is not None and len(ids) > self.max_length:
            if expected and self.image_token_id in ids[self.max_length:]:
                raise DataFormatError(
                    f"{record.describe()}: {len(ids)} tokens; cutting to max_length={self.max_length} would cut "
                    "image tokens; raise --max-length"
                )
            ids = ids[: self.max_length]
            labels = labels[: self.max_length] if labels is not None else None
        return ids, labels

    def load_image(self, record: Record) -> torch.Tensor:
        """-> float tensor (3, H, W). Raises `DataFormatError` naming the record if the file is unreadable."""
        try:
            with Image.open(record.image) as image:
                return self.image_preprocessor(image)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise DataFormatError(f"{record.describe()}: cannot read image {record.image}: {err}") from None


class LlavaDataset(torch.utils.data.Dataset):
    """Training dataset: each item is a dict with input_ids, labels and (if the record has one) pixel_values."""

    def __init__(self, records: list[Record], processor: VLMProcessor):
        self.records = records
        self.processor = processor

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        record = self.records[i]
        item = self.processor.encode_training(record)
        if record.image is not None:
            item["pixel_values"] = self.processor.load_image(record)
        return item


@dataclass
class LlavaCollator:
    """Pads a list of items into a batch: input_ids / labels / attention_mask (B, L), pixel_values (N_img, 3, H, W).

    ``padding_side="left"`` is for generation; training uses right padding."""

    pad_token_id: int
    padding_side: str = "right"
    pixel_dtype: torch.dtype | None = field(default=None)

    def __call__(self, features: list[dict]) -> dict:
        length = max(len(f["input_ids"]) for f in features)
        batch_ids = torch.full((len(features), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), length), dtype=torch.long)
        has_labels = "labels" in features[0]
        labels = torch.full((len(features), length), IGNORE_INDEX, dtype=torch.long) if has_labels else None
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            span = slice(length - n, length) if self.padding_side == "left" else slice(0, n)
            batch_ids[row, span] = torch.as_tensor(f["input_ids"])
            mask[row, span] = 1
            if has_labels:
                labels[row, span] = torch.as_tensor(f["labels"])
        batch = {"input_ids": batch_ids, "attention_mask": mask}
        if has_labels:
            batch["labels"] = labels
        pixels = [f["pixel_values"] for f in features if f.get("pixel_values") is not None]
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
            if self.pixel_dtype is not None:
                batch["pixel_values"] = batch["pixel_values"].to(self.pixel_dtype)
        return batch
