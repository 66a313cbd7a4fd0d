"""The writers `hotelbot export` shares between components. Each takes LOADED objects (from the component's
own loader), never a version's file names, so an export does not depend on how a version stores its files.

* :func:`save_encoder_with_head`: a standard Hugging Face directory (``config.json`` + ``model.safetensors``
  under the key names ``AutoModel`` expects + the tokenizer files), the head on top of it
  (``head.safetensors``: ``weight`` and ``bias`` of one linear layer; ``head.json``: labels and how inputs are
  built) and the model card (``README.md``) saying exactly how to compute the answer;
* :func:`sentence_classifier_card`, :func:`token_classifier_card`, :func:`retrieval_card`: those model cards
  (each holds a Python snippet that the tests run against the version's own answers);
* :func:`copy_onnx_runtime`: ONNX graphs with every external data file they reference (read from the graphs,
  not guessed from their names) plus the small files a runtime reads.

Files are copied with their content only (never hard-linked, never read-only): an export is the user's to
change, and a registry's stored files must never be reachable through it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Sequence

from .._io import atomic_write_json
from ..data import OUT_OF_SCOPE
from ..errors import ExportUnavailable, ModelError
from ..export.graph import external_entries
from ..runtime.layout import (
    CLASSIFIER_FILE,
    ONNX_FILES,
    RUNTIME_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    TOKENIZER_INDEX_FILE,
)
from ..runtime.onnx import RuntimeClassifierConfig
from ..runtime.selection import read_runtime_spec

HEAD_WEIGHTS = "head.safetensors"
HEAD_CONFIG = "head.json"
MODEL_CARD = "README.md"
HEAD_FORMAT = "hotelbot-export-head/1"
EXPORT_VECTORS_FILE = "embeddings.npy"  # a knowledge base's vectors: row i is line i of its chunks file
EXPORT_CONFIG_FILE = "knowledge.json"  # how a knowledge base embeds a query
EXPORT_KNOWLEDGE_FORMAT = "hotelbot-export-knowledge/1"
TEXT_CLEANING = (
    "NFC-normalize, replace control/format characters (Unicode Cc, Cf) by a space, collapse "
    "whitespace runs to one space, strip"
)

# hotelbot_cli.data.clean_text, for a program without hotelbot (the tests check that both agree).
CLEAN_SNIPPET = """import re
import unicodedata


def clean(text):  # hotelbot's text cleaning (hotelbot_cli.data.clean_text)
    text = unicodedata.normalize("NFC", text)
    text = "".join(" " if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)
    return re.sub(r"\\s+", " ", text).strip()
"""


def auto_model_call(model_type: str) -> str:
    """How the cards call ``AutoModel.from_pretrained``: BERT-like encoders have no pooler in hotelbot (the
    answer never uses it), so the snippet does not let AutoModel create a random one."""
    from ..modeling import _no_pooler_kwargs  # modeling imports torch

    extra = "".join(f", {k}={v!r}" for k, v in _no_pooler_kwargs(SimpleNamespace(model_type=model_type)).items())
    return f"AutoModel.from_pretrained(path{extra}).eval()"


def save_encoder(encoder: Any, tokenizer: Any, target: Path) -> None:
    """``encoder`` (a transformers model of an AutoModel class) and its tokenizer as a Hugging Face directory."""
    from ..modeling import quiet_transformers  # modeling imports torch

    target.mkdir(parents=True, exist_ok=True)
    with quiet_transformers():
        encoder.save_pretrained(str(target))
        tokenizer.save_pretrained(str(target))


def save_encoder_with_head(
    target: Path, encoder: Any, tokenizer: Any, head: Any, head_config: dict[str, Any], card: str
) -> dict[str, Any]:
    """The encoder's Hugging Face directory, ``head.safetensors`` (the linear ``head``'s weight and bias),
    ``head.json`` and the model card. Returns the record's facts."""
    from safetensors.torch import save_file  # imports torch

    save_encoder(encoder, tokenizer, target)
    save_file(
        {"weight": head.weight.detach().cpu().contiguous(), "bias": head.bias.detach().cpu().contiguous()},
        str(target / HEAD_WEIGHTS),
        metadata={"format": HEAD_FORMAT},
    )
    atomic_write_json(target / HEAD_CONFIG, {"format": HEAD_FORMAT, **head_config})
    (target / MODEL_CARD).write_text(card, encoding="utf-8")
    return {
        "loads_with": f"AutoConfig/AutoModel/AutoTokenizer + {HEAD_WEIGHTS} ({MODEL_CARD} shows how)",
        "model_type": getattr(encoder.config, "model_type", None),
    }


def card(
    title: str, pipeline_tag: str, intro: str, steps: Sequence[str], snippet: str, notes: Sequence[str] = ()
) -> str:
    """A model card: front matter, what it is, the numbered steps of the computation, a runnable snippet."""
    lines = [
        "---",
        "library_name: transformers",
        f"pipeline_tag: {pipeline_tag}",
        "tags:",
        "- hotelbot",
        "---",
        "",
        f"# {title}",
        "",
        intro,
        "",
        "## How the answer is computed",
        "",
    ]
    lines += [f"{n}. {step}" for n, step in enumerate(steps, 1)]
    lines += [
        "",
        "Run from the export directory (the one holding `export.json`):",
        "",
        "```python",
        snippet.strip("\n"),
        "```",
        "",
    ]
    lines += [f"{note}\n" for note in notes]
    return "\n".join(lines)


def _pooling_step(pooling: str) -> str:
    if pooling == "cls":
        return "Pooling: CLS, the first token's vector of `last_hidden_state`."
    return (
        "Pooling: mean over the attention mask: the sum of `last_hidden_state` over the tokens whose "
        "`attention_mask` is 1, divided by their count."
    )


def _pooling_code(pooling: str) -> str:
    if pooling == "cls":
        return "    pooled = hidden[:, 0]  # CLS pooling\n"
    return (
        '    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)\n'
        "    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)  # mean over the mask\n"
    )


def sentence_classifier_head(config: Any, version: str) -> dict[str, Any]:
    """``head.json`` of a sentence classifier (modeling.ClassifierConfig ``config``); a kNN out-of-scope detector's
    spec under ``out_of_scope_detector`` (its memory is exported beside as ``oos_memory.npy``)."""
    detector = getattr(config, "oos_detector", None)
    return {
        "task": "text-classification",
        "labels": list(config.labels),
        "pooling": config.pooling,
        "query_prefix": config.query_prefix,
        "max_length": config.max_length,
        "out_of_scope_threshold": config.oos_threshold,
        "out_of_scope_label": OUT_OF_SCOPE if config.oos_threshold is not None or detector else None,
        **({"out_of_scope_detector": detector} if detector else {}),
        "text_cleaning": TEXT_CLEANING,
        "base_model": config.base_model,
        "version": version,
    }


def sentence_classifier_card(what: str, directory: str, head: dict[str, Any], model_type: str, version: str) -> str:
    """How to reproduce a sentence classifier's probabilities (and the out-of-scope answer) from the export."""
    prefix = head["query_prefix"]
    threshold = head["out_of_scope_threshold"]
    detector = head.get("out_of_scope_detector") or {}
    steps = [
        f"Clean each text: {TEXT_CLEANING} (`clean` below).",
        f"Prepend the query prefix {prefix!r} (`query_prefix` in `{HEAD_CONFIG}`)."
        if prefix
        else f"No query prefix (`query_prefix` in `{HEAD_CONFIG}` is empty).",
        f"Tokenize with padding to the longest text and truncation at `max_length` = {head['max_length']}; "
        "feed `input_ids` and `attention_mask` to the encoder.",
        _pooling_step(head["pooling"]),
        f"Linear head: `logits = pooled @ weight.T + bias` (`{HEAD_WEIGHTS}`); one logit per label, in the "
        f"order of `labels` in `{HEAD_CONFIG}`.",
        "Softmax over the logits: the probabilities; the answer is the label with the highest one.",
        (
            f"Out of scope (nearest neighbours): scale the pooled vector to length 1 and take its dot product "
            f"with each row of `{detector.get('memory')}` (the in-scope training messages' pooled vectors, length 1); "
            f"when the {detector.get('k')}-th largest is below `out_of_scope_detector.threshold` = "
            f"{detector.get('threshold')}, the answer is `{OUT_OF_SCOPE}` (the probabilities are unchanged)."
        )
        if detector.get("method") == "knn" and detector.get("threshold") is not None
        else (
            f"Out of scope: when the highest probability is below `out_of_scope_threshold` = {threshold}, the "
            f"answer is `{OUT_OF_SCOPE}` (the probabilities are unchanged)."
        )
        if threshold is not None
        else "No out-of-scope threshold: the answer is always the most probable label.",
    ]
    snippet = (
        CLEAN_SNIPPET
        + f'''
import json

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

path = "{directory}"
head = json.load(open(f"{{path}}/{HEAD_CONFIG}", encoding="utf-8"))
weights = load_file(f"{{path}}/{HEAD_WEIGHTS}")
tokenizer = AutoTokenizer.from_pretrained(path)
encoder = {auto_model_call(model_type)}

texts = ["quiero ver las noticias", "¿a qué hora es el desayuno?"]
enc = tokenizer([head["query_prefix"] + clean(t) for t in texts], padding=True, truncation=True,
                max_length=head["max_length"], return_tensors="pt")
with torch.no_grad():
    hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
{_pooling_code(head["pooling"])}    logits = pooled @ weights["weight"].T + weights["bias"]
    probs = torch.softmax(logits, dim=-1)
confidence, best = probs.max(dim=-1)
threshold = head["out_of_scope_threshold"]
scores = confidence.tolist()
detector = head.get("out_of_scope_detector") or {{}}
if detector.get("method") == "knn":  # nearest neighbours: similarity with the k-th nearest training message
    import numpy as np

    memory = np.load(f"{{path}}/{{detector['memory']}}", allow_pickle=False)
    unit = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    scores = np.sort(unit @ memory.T, axis=1)[:, -min(detector["k"], len(memory))].tolist()
    threshold = detector["threshold"]
answers = [head["out_of_scope_label"] if threshold is not None and s < threshold else head["labels"][int(i)]
           for s, i in zip(scores, best)]
print(list(zip(texts, answers, confidence.tolist())))
'''
    )
    return card(
        f"hotelbot {what} ({version})",
        "text-classification",
        f"The {what} of hotelbot version {version}: a `{model_type}` encoder (a standard Hugging Face "
        f"model: `AutoConfig`, `AutoModel`, `AutoTokenizer` load this directory) with {head['pooling']} "
        f"pooling and a linear head over {len(head['labels'])} labels (`{HEAD_WEIGHTS}`, `{HEAD_CONFIG}`).",
        steps,
        snippet,
        [
            "`AutoModelForSequenceClassification` does not apply: its heads pool differently (CLS plus a "
            "dense layer). Use the encoder as above."
        ],
    )


def sentence_classifier_hf(model: Any, tokenizer: Any, target: Path, what: str, version: str) -> dict[str, Any]:
    """A sentence classifier (modeling.SentenceClassifier: the intent classifier, sentiment) as an HF directory
    with its head and model card; ``target``'s name is the snippet's path, relative to the export root."""
    head = sentence_classifier_head(model.classifier_config, version)
    model_type = model.encoder.config.model_type
    return save_encoder_with_head(
        target,
        model.encoder,
        tokenizer,
        model.head,
        head,
        sentence_classifier_card(what, target.name, head, model_type, version),
    )


def onnx_classifier_card(
    target: Path, graphs: Sequence[str], version: str, what: str = "intent classifier"
) -> dict[str, Any]:
    """The model card of an exported sentence classifier's ONNX runtime files (already copied into ``target``):
    the intent classifier or the sentiment model; and the record's facts."""
    config = RuntimeClassifierConfig.from_file(target / CLASSIFIER_FILE)
    chosen = (read_runtime_spec(target) or {}).get("runtime")
    graph = graphs[0]
    threshold = config.oos_threshold
    detector = config.oos_detector or {}
    steps = [
        f"Clean each text: {TEXT_CLEANING} (`clean` below).",
        f"Prepend the query prefix {config.query_prefix!r}." if config.query_prefix else "No query prefix.",
        f"Tokenize with padding to the longest text and truncation at `max_length` = {config.max_length}.",
        "Run the graph: int64 `input_ids` and `attention_mask` (batch x tokens) in, `logits` (batch x labels) "
        f"out; pooling and the linear head are inside the graph. Labels are `labels` in `{CLASSIFIER_FILE}`.",
        "Softmax over the logits: the probabilities; the answer is the label with the highest one.",
        (
            f"Out of scope: when the highest probability is below `oos_threshold` = {threshold}, the answer is "
            f"`{OUT_OF_SCOPE}`."
        )
        if threshold is not None
        else (
            f"Out of scope (nearest neighbours, `oos_detector` in `{CLASSIFIER_FILE}`): the graph's second output "
            f"`embedding` scaled to length 1, dot product with each row of `{detector.get('memory')}`; "
            f"below `threshold` = {detector.get('threshold')} at the "
            f"{detector.get('k')}-th largest, the answer is `{OUT_OF_SCOPE}`."
        )
        if detector.get("method") == "knn"
        else "No out-of-scope threshold.",
    ]
    snippet = (
        CLEAN_SNIPPET
        + f'''
import json

import numpy as np
import onnxruntime
from transformers import AutoTokenizer

path = "{target.name}"
config = json.load(open(f"{{path}}/{CLASSIFIER_FILE}", encoding="utf-8"))
tokenizer = AutoTokenizer.from_pretrained(path)
session = onnxruntime.InferenceSession(f"{{path}}/{graph}", providers=["CPUExecutionProvider"])

texts = ["quiero ver las noticias", "¿a qué hora es el desayuno?"]
enc = tokenizer([config.get("query_prefix", "") + clean(t) for t in texts], padding=True, truncation=True,
                max_length=config["max_length"], return_tensors="np")
feed = {{i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()}}
detector = config.get("oos_detector") or {{}}
knn = detector.get("method") == "knn"  # nearest neighbours: the graph also returns the pooled embedding
outputs = session.run(["logits", "embedding"] if knn else ["logits"], feed)
logits = outputs[0]
probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
probs /= probs.sum(axis=-1, keepdims=True)
threshold, scores = config.get("oos_threshold"), probs.max(axis=-1)
if knn:  # similarity with the k-th nearest in-scope training message
    memory = np.load(f"{{path}}/{{detector['memory']}}", allow_pickle=False)
    unit = outputs[1] / np.linalg.norm(outputs[1], axis=-1, keepdims=True)
    scores = np.sort(unit @ memory.T, axis=1)[:, -min(detector["k"], len(memory))]
    threshold = detector["threshold"]
answers = ["{OUT_OF_SCOPE}" if threshold is not None and s < threshold else config["labels"][int(p.argmax())]
           for s, p in zip(scores, probs)]
print(list(zip(texts, answers, probs.max(axis=-1).tolist())))
'''
    )
    notes = [
        f"Graphs: {', '.join(f'`{g}`' for g in graphs)} (`model.int8.onnx`, when present: dynamic int8, the same "
        "inputs and output; hotelbot runs it one text at a time, because its answers depend on the other texts "
        f"of a padded batch). `runtime.json` records what hotelbot measured and the runtime it serves with "
        f"({chosen or 'torch'})."
    ]
    summary = f"The {what} of hotelbot version {version} as the ONNX files it serves with."
    return _onnx_card(
        target,
        (f"hotelbot {what}, ONNX ({version})", "text-classification", summary),
        steps,
        snippet,
        notes,
        graphs,
        chosen,
        "runtime.OnnxPredictor.from_model_dir",
    )


def _onnx_card(
    target: Path,
    head: tuple[str, str, str],
    steps: Sequence[str],
    snippet: str,
    notes: Sequence[str],
    graphs: Sequence[str],
    chosen: str | None,
    loader: str,
) -> dict[str, Any]:
    """Write an ONNX export's model card (``head``: title, task, summary); the record's facts (``chosen``: the
    runtime its runtime.json names)."""
    (target / MODEL_CARD).write_text(card(*head, list(steps), snippet, list(notes)), encoding="utf-8")
    return {
        "loads_with": f"onnxruntime.InferenceSession('{graphs[0]}') + tokenizer.json ({MODEL_CARD} shows how; "
        f"in hotelbot: {loader})",
        "graphs": list(graphs),
        "runtime": chosen,
    }


# What an ONNX export copies beside the graphs (those a model directory has).
ONNX_RUNTIME_FILES = (
    RUNTIME_FILE,
    TOKENIZER_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_INDEX_FILE,
    "special_tokens_map.json",
)


def onnx_runtime_export(model_dir: Path, target: Path, files: Sequence[str], what: str, version: str) -> list[str]:
    """Copy the ONNX graphs ``model_dir`` serves with (each with its external data), :data:`ONNX_RUNTIME_FILES`
    and ``files`` into ``target``; the graphs written. ExportUnavailable when there is none (a model trained
    before its ONNX export runs on torch)."""
    graphs = list(ONNX_FILES.values())
    written = copy_onnx_runtime(model_dir, target, graphs, [*ONNX_RUNTIME_FILES, *files])
    exported = [g for g in graphs if g in written]
    if not exported:
        raise ExportUnavailable(f"the {what} of {version} has no ONNX export (it runs on torch)")
    return exported


def onnx_tagger_card(
    target: Path, graphs: Sequence[str], config: dict[str, Any], config_file: str, version: str
) -> dict[str, Any]:
    """The model card of the entity tagger's ONNX runtime files (already copied into ``target``; ``config`` is
    its ``config_file``): the steps of its hf card (:func:`token_classifier_card`), one graph in place of
    encoder and head."""
    chosen = (read_runtime_spec(target) or {}).get("runtime")
    graph = graphs[0]
    steps = [
        _tagger_tokenize_step(config),
        "Run the graph: int64 `input_ids` and `attention_mask` (1 x tokens) in, per-token `logits` "
        f"(1 x tokens x tags) out, one logit per BIO tag in the order of `tags` in `{config_file}`; "
        "softmax; each token's tag is the most probable.",
        *TAGGER_DECODE_STEPS,
    ]
    snippet = (
        f"""import json

import numpy as np
import onnxruntime
from transformers import AutoTokenizer

path = "{target.name}"
head = json.load(open(f"{{path}}/{config_file}", encoding="utf-8"))
tokenizer = AutoTokenizer.from_pretrained(path)
session = onnxruntime.InferenceSession(f"{{path}}/{graph}", providers=["CPUExecutionProvider"])

text = "Soy Ana, de la habitación 305"
enc = tokenizer(head["prefix"] + text, truncation=True, max_length=head["max_length"], return_tensors="np",
                return_offsets_mapping=True, return_special_tokens_mask=True)
offsets, special = enc.pop("offset_mapping")[0].tolist(), enc.pop("special_tokens_mask")[0].tolist()
(logits,) = session.run(["logits"], {{"input_ids": enc["input_ids"].astype(np.int64),
                                      "attention_mask": enc["attention_mask"].astype(np.int64)}})
probs = np.exp(logits[0] - logits[0].max(axis=-1, keepdims=True))
probs /= probs.sum(axis=-1, keepdims=True)
best, confidence = probs.argmax(axis=-1).tolist(), probs.max(axis=-1).tolist()
"""
        + TAGGER_DECODE_SNIPPET
    )
    notes = [
        "The snippet leaves out the last step (whole words, merging); `hotelbot predict` applies it.",
        f"Graphs: {', '.join(f'`{g}`' for g in graphs)} (`model.int8.onnx`, when present: dynamic int8, the same "
        "inputs and output; run it one text at a time, as hotelbot does: in a padded batch a text's tags "
        f"depend on the other texts). `runtime.json` records what hotelbot measured and the runtime it serves "
        f"with ({chosen or 'torch'}).",
    ]
    summary = (
        f"The entity extractor of hotelbot version {version} as the ONNX files it serves with: encoder and "
        f"per-token head over {len(config['tags'])} BIO tags of {len(config['labels'])} entity types in one graph."
    )
    return _onnx_card(
        target,
        (f"hotelbot entity extractor, ONNX ({version})", "token-classification", summary),
        steps,
        snippet,
        notes,
        graphs,
        chosen,
        "components.entities.onnx.OnnxEntityExtractor.from_dir",
    )


def _tagger_tokenize_step(head: dict[str, Any]) -> str:
    prefix = head["prefix"]
    return (
        "Tokenize the RAW text (no cleaning"
        + (f", prefix {prefix!r}" if prefix else ", no prefix")
        + f") with truncation at `max_length` = {head['max_length']}, asking for `offset_mapping`: "
        "entity offsets index the text exactly as given."
    )


# From per-token tags to entities: the steps (both entity cards) and the code (after `best`, `confidence`:
# each token's tag index and probability, `offsets`, `special`, `text` and `head` are set).
TAGGER_DECODE_STEPS = (
    "Special tokens and whitespace-only tokens get no tag. Reading the tags left to right: `B-X` opens an "
    "entity of type X, `I-X` extends an open entity of type X (an `I-X` after anything else opens one), "
    "`O` closes it. An entity's span runs from its first token's start to its last token's end offset; "
    "its confidence is the mean of its tokens' probabilities.",
    "A span that starts or ends inside a word is widened to the whole word; spans that then overlap "
    "are merged into the first.",
)
TAGGER_DECODE_SNIPPET = """skip, entities, current = len(head["prefix"]), [], None
for (start, end), is_special, tag, score in zip(offsets, special, best, confidence):
    start, end = max(start - skip, 0), end - skip
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if is_special or end <= start:
        continue
    tag = head["tags"][tag]
    if tag.startswith("I-") and current and current[0] == tag[2:]:
        current[2], current[3] = end, current[3] + [score]
        continue
    if current:
        entities.append(current)
    current = [tag[2:], start, end, [score]] if tag != "O" else None
if current:
    entities.append(current)
print([(kind, text[s:e], s, e, sum(p) / len(p)) for kind, s, e, p in entities])
"""


def token_classifier_card(what: str, directory: str, head: dict[str, Any], model_type: str, version: str) -> str:
    """How to reproduce the entity tagger's per-token tags and its entities from the export."""
    steps = [
        _tagger_tokenize_step(head),
        "Run the encoder; no pooling: every token keeps its vector of `last_hidden_state`.",
        f"Linear head on each token: `logits = hidden @ weight.T + bias` (`{HEAD_WEIGHTS}`), one logit per "
        f"BIO tag in the order of `tags` in `{HEAD_CONFIG}`; softmax; each token's tag is the most probable.",
        *TAGGER_DECODE_STEPS,
    ]
    snippet = (
        f'''import json

import torch
from safetensors.torch import load_file
from transformers import AutoModel, AutoTokenizer

path = "{directory}"
head = json.load(open(f"{{path}}/{HEAD_CONFIG}", encoding="utf-8"))
weights = load_file(f"{{path}}/{HEAD_WEIGHTS}")
tokenizer = AutoTokenizer.from_pretrained(path)
encoder = {auto_model_call(model_type)}

text = "Soy Ana, de la habitación 305"
enc = tokenizer(head["prefix"] + text, truncation=True, max_length=head["max_length"], return_tensors="pt",
                return_offsets_mapping=True, return_special_tokens_mask=True)
offsets, special = enc.pop("offset_mapping")[0].tolist(), enc.pop("special_tokens_mask")[0].tolist()
with torch.no_grad():
    hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state[0]
    probs = torch.softmax(hidden @ weights["weight"].T + weights["bias"], dim=-1)
confidence, best = probs.max(dim=-1)
best, confidence = best.tolist(), confidence.tolist()
'''
        + TAGGER_DECODE_SNIPPET
    )
    return card(
        f"hotelbot {what} ({version})",
        "token-classification",
        f"The {what} of hotelbot version {version}: a `{model_type}` encoder (a standard Hugging Face "
        f"model) with a linear head over {len(head['tags'])} BIO tags of {len(head['labels'])} entity "
        f"types (`{HEAD_WEIGHTS}`, `{HEAD_CONFIG}`).",
        steps,
        snippet,
        ["The snippet leaves out the last step (whole words, merging); `hotelbot predict` applies it."],
    )


def retrieval_card(directory: str, config: dict[str, Any], model_type: str, version: str, chunks_file: str) -> str:
    """How to embed a question and search the exported chunks like `hotelbot search`."""
    steps = [
        f"Clean the question: {TEXT_CLEANING} (`clean` below).",
        f"Prepend the query prefix {config['query_prefix']!r}." if config["query_prefix"] else "No query prefix.",
        f"Tokenize with truncation at `max_length` = {config['max_length']}; run the encoder.",
        _pooling_step(config["pooling"]),
        "L2-normalize the pooled vector.",
        f"Score every chunk by the dot product with its row of `{EXPORT_VECTORS_FILE}` (rows are L2-normalized: "
        f"the cosine similarity); the best chunks are the answer. Row i is line i of `{chunks_file}`.",
        f"The chunks were embedded the same way with the passage prefix {config['passage_prefix']!r} and "
        'each chunk\'s passage text (its heading path joined by " > ", a newline, its text).',
    ]
    snippet = (
        CLEAN_SNIPPET
        + f'''
import json

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

path = "{directory}"
config = json.load(open(f"{{path}}/{EXPORT_CONFIG_FILE}", encoding="utf-8"))
chunks = [json.loads(line) for line in open(f"{{path}}/{chunks_file}", encoding="utf-8")]
vectors = np.load(f"{{path}}/{EXPORT_VECTORS_FILE}", allow_pickle=False)
tokenizer = AutoTokenizer.from_pretrained(path)
encoder = {auto_model_call(model_type)}

question = "¿a qué hora es el desayuno?"
enc = tokenizer([config["query_prefix"] + clean(question)], truncation=True, max_length=config["max_length"],
                return_tensors="pt")
with torch.no_grad():
    hidden = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
{_pooling_code(config["pooling"])}query = torch.nn.functional.normalize(pooled, dim=-1)[0].numpy()
scores = vectors @ query
top = np.argsort(-scores)[:5]
print([(chunks[i]["doc"], chunks[i]["heading"], float(scores[i])) for i in top])
'''
    )
    return card(
        f"hotelbot knowledge base ({version})",
        "feature-extraction",
        f"The knowledge base of hotelbot version {version}: its embedding model (a `{model_type}` encoder, a "
        f"standard Hugging Face model), its chunks (`{chunks_file}`), their vectors (`{EXPORT_VECTORS_FILE}`, "
        f"float32, one L2-normalized row per chunk) and how queries are embedded (`{EXPORT_CONFIG_FILE}`).",
        steps,
        snippet,
    )


# ------------------------------------------------------------------------------------------------ ONNX


def _inside(location: str) -> bool:
    """A location that names a file below the graph's own directory (copied to the same relative path)."""
    parts = Path(location).parts
    return bool(parts) and not Path(location).is_absolute() and ".." not in parts


def copy_onnx_graph(source: Path, target_dir: Path) -> list[str]:
    """Copy the graph ``source`` into ``target_dir`` with every external data file it references (read from
    its initializers' ``external_data`` locations, however many files there are). A location outside the
    graph's directory is copied beside the graph and the graph's reference rewritten; otherwise the graph's
    bytes are copied unchanged. Returns the paths written, relative to ``target_dir``."""
    import onnx  # heavy: imported on use

    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises DecodeError and others for a bad file
        raise ModelError(f"cannot read the ONNX graph {source}: {exc}") from None
    written: list[Any] = []
    renamed: dict[str, str] = {}
    for entry in external_entries(model):
        location = entry.value
        origin = Path(location) if Path(location).is_absolute() else source.parent / location
        if location not in renamed:
            local = location if _inside(location) else f"{source.name}.{len(renamed)}.{Path(location).name}"
            if not origin.is_file():
                raise ModelError(f"the ONNX graph {source.name} references {location}, which is missing")
            (target_dir / local).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target_dir / local)
            renamed[location] = local
            written.append(local)
        entry.value = renamed[location]
    if any(old != new for old, new in renamed.items()):
        onnx.save(model, str(target_dir / source.name))  # only the references changed (no data loaded)
    else:
        shutil.copyfile(source, target_dir / source.name)
    return [source.name, *written]


def copy_onnx_runtime(model_dir: Path, target: Path, graphs: Sequence[str], files: Sequence[str]) -> list[str]:
    """The ONNX ``graphs`` of ``model_dir`` that exist (each with its external data) and the other runtime
    ``files`` that exist, copied into ``target``. Returns the paths written, relative to ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name in graphs:
        if (model_dir / name).is_file():
            written += copy_onnx_graph(model_dir / name, target)
    for name in files:
        if (model_dir / name).is_file() and name not in written:
            shutil.copyfile(model_dir / name, target / name)
            written.append(name)
    return written


__all__ = [
    "CLEAN_SNIPPET",
    "ONNX_RUNTIME_FILES",
    "onnx_runtime_export",
    "onnx_tagger_card",
    "HEAD_CONFIG",
    "HEAD_WEIGHTS",
    "MODEL_CARD",
    "copy_onnx_graph",
    "copy_onnx_runtime",
    "onnx_classifier_card",
    "retrieval_card",
    "save_encoder",
    "save_encoder_with_head",
    "sentence_classifier_card",
    "sentence_classifier_hf",
    "sentence_classifier_head",
    "token_classifier_card",
]
