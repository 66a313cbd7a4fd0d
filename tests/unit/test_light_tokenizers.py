"""The light Unigram tokenizers against the Hugging Face tokenizer of the default packaged e5: the offsets the
joint NLU runtime maps entities with, and the generator's text tokenizer (ids of texts and pairs with
truncation, decoding)."""

import json
import random
from pathlib import Path

import pytest
from conftest import REPO

from hotelbot_cli.runtime.tokenizers import (FullEncoder, LightTextTokenizer, UnigramSubsetEncoder,
                                             load_fast_tokenizer, load_text_encoder)

TEXTS = ([json.loads(line)["text"] for line in (REPO / "datasets" / "entidades_es.jsonl").read_text("utf-8").splitlines()]
         [:150] + ["  hola   qué tal ", "café\u0301 con leche", "<s> marcas raras </s>", "¡¡HOLA!!", "ñandú 🙂"])


@pytest.fixture(scope="module")
def e5_dir(model_cache):
    from hotelbot_cli.modeling import resolve_base_model

    return Path(resolve_base_model("packaged:multilingual-e5-small", model_cache).location)


def test_subset_encoder_gives_the_whole_tokenizers_offsets(e5_dir):
    subset = load_text_encoder(e5_dir, 64)
    assert isinstance(subset, UnigramSubsetEncoder)
    whole = FullEncoder(load_fast_tokenizer(e5_dir, 64))
    texts = ["query: " + t for t in TEXTS]
    ids, mask, offsets, special = subset.encode_with_offsets(texts)
    want_ids, want_mask, want_offsets, want_special = whole.encode_with_offsets(texts)
    assert (ids == want_ids).all() and (mask == want_mask).all()
    for row, (offs, spec) in enumerate(zip(offsets, special)):  # unpadded, or padded on the right (a batch
        n = int(mask[row].sum())                                  # with an added token goes whole)
        assert [tuple(o) for o in offs[:n]] == [tuple(o) for o in want_offsets[row][:n]]
        assert list(spec[:n]) == list(want_special[row][:n]) and len(offs) in (n, ids.shape[1])


def test_the_generators_light_tokenizer_matches_the_hugging_face_one(e5_dir):
    from transformers import AutoTokenizer

    light, hf = LightTextTokenizer.load(e5_dir), AutoTokenizer.from_pretrained(str(e5_dir))
    assert (light.bos_token_id, light.eos_token_id, light.pad_token_id) == (hf.bos_token_id, hf.eos_token_id,
                                                                            hf.pad_token_id)
    docs = [p.read_text("utf-8") for p in sorted((REPO / "datasets" / "documentos").glob("*.md"))]
    rng = random.Random(0)
    for text in TEXTS:
        context = rng.choice(docs)[rng.randrange(0, 1500):][:rng.randrange(40, 900)]
        for args, kwargs in (((f"query: {text}", f"passage: {context}"), {"truncation": "longest_first",
                                                                          "max_length": rng.choice([32, 128, 256])}),
                             ((f"query: {text}",), {"truncation": True, "max_length": 24}),
                             ((text,), {"add_special_tokens": False, "truncation": True, "max_length": 39})):
            ids = light(*args, **kwargs)["input_ids"]
            assert ids == list(hf(*args, **kwargs)["input_ids"]), (args, kwargs)
            for skip in (True, False):
                assert light.decode(ids + [0, 2, 1], skip_special_tokens=skip) == \
                    hf.decode(ids + [0, 2, 1], skip_special_tokens=skip)
