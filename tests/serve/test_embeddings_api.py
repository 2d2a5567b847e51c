"""/v1/embeddings with the bundled MiniLM through the official openai client, against
sentence-transformers' own encode of the same texts."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from edgeweave.prompt.embed import embed_texts, minilm
from tests.serve.conftest import API_KEY, client

EMB = "all-MiniLM-L6-v2"
TEXTS = ["the kitchen door is open", "battery low on the gateway",
         "  what is the room humidity?  ", "Zürich: 23 °C, 日本語 too",
         "a much longer sentence about a temperature sensor that reports every minute and "
         "sleeps in between to save its battery, which lasts a year"]


def vectors(resp) -> np.ndarray:  # noqa: ANN001
    assert [d.index for d in resp.data] == list(range(len(resp.data)))
    return np.asarray([d.embedding for d in resp.data], dtype=np.float32)


def test_the_embedding_model_is_listed_and_loaded_on_first_use(server):
    # first in this module: the server started without loading the model
    c = client(server)
    ids = [m.id for m in c.models.list()]
    assert EMB in ids
    m = c.models.retrieve(EMB)
    assert m.id == EMB and m.model_extra["edgeweave"]["dimensions"] == 384
    assert m.model_extra["edgeweave"]["loaded"] is False
    c.embeddings.create(model=EMB, input="wake up")
    assert c.models.retrieve(EMB).model_extra["edgeweave"]["loaded"] is True


def test_vectors_equal_sentence_transformers_encode_for_float_and_base64(server):
    c = client(server)
    ref = embed_texts(TEXTS)  # SentenceTransformer.encode(normalize_embeddings=True)
    as_float = c.embeddings.create(model=EMB, input=TEXTS, encoding_format="float")
    got = vectors(as_float)
    assert got.shape == (len(TEXTS), 384)
    assert np.abs(got - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    want_tokens = sum(len(x) for x in minilm().tokenizer(TEXTS)["input_ids"])
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == want_tokens
    assert as_float.model == EMB and as_float.object == "list"
    # the client's default is base64, which it decodes itself
    assert np.array_equal(vectors(c.embeddings.create(model=EMB, input=TEXTS)), got)
    raw = httpx.post(f"{server}/v1/embeddings", json={"model": EMB, "input": TEXTS[0],
                                                      "encoding_format": "base64"},
                     headers={"Authorization": f"Bearer {API_KEY}"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    # one text alone is a forward of its own: equal up to float rounding of the batch
    assert np.abs(decoded - got[0]).max() < 1e-6


def test_a_single_string_and_token_ids_of_this_model_give_the_same_vector(server):
    c = client(server)
    one = vectors(c.embeddings.create(model=EMB, input=TEXTS[1], encoding_format="float"))
    assert one.shape == (1, 384) and np.abs(one[0] - embed_texts(TEXTS[1:2])[0]).max() < 1e-5
    ids = minilm().tokenizer(TEXTS[:2])["input_ids"]
    by_ids = vectors(c.embeddings.create(model=EMB, input=ids, encoding_format="float"))
    assert np.abs(by_ids - embed_texts(TEXTS[:2])).max() < 1e-5
    single = vectors(c.embeddings.create(model=EMB, input=ids[1], encoding_format="float"))
    assert np.abs(single[0] - one[0]).max() < 1e-5


def test_a_batch_larger_than_one_forward_keeps_the_input_order(server):
    # 64 inputs of ~150 tokens pass the padded size of one forward: split, then reassembled
    texts = [f"reading {i}: " + "the sensor reports a value " * (5 + (i * 7) % 25)
             for i in range(64)]
    got = vectors(client(server).embeddings.create(model=EMB, input=texts,
                                                   encoding_format="float"))
    assert np.abs(got - embed_texts(texts)).max() < 1e-5


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ({"model": "tiny-llama", "input": "x"}, 400, "model"),  # a generation model
    ({"model": EMB, "input": "x", "dimensions": 128}, 400, "dimensions"),
    ({"model": EMB, "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": EMB, "input": ""}, 400, "input"),
    ({"model": EMB, "input": []}, 400, "input"),
    ({"model": EMB, "input": ["ok", "  "]}, 400, "input"),
    ({"model": EMB, "input": "word " * 300}, 400, "input"),  # > 256 tokens: refused, not cut
    ({"model": EMB, "input": [101, 10**6, 102]}, 400, "input"),
    ({"model": EMB, "input": [[]]}, 400, "input"),
    ({"model": EMB, "input": 5}, 400, "input"),
])
def test_bad_embedding_requests_are_openai_errors_naming_the_field(server, body, status, param):
    r = httpx.post(f"{server}/v1/embeddings", json=body,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    err = r.json()["error"]
    assert r.status_code == status and err["param"] == param, r.text
    assert set(err) == {"message", "type", "param", "code"}


def test_the_right_dimensions_are_accepted_and_errors_reach_the_openai_client(server):
    c = client(server)
    r = c.embeddings.create(model=EMB, input="ok", dimensions=384, encoding_format="float")
    assert len(r.data[0].embedding) == 384
    with pytest.raises(openai.NotFoundError) as e:
        c.embeddings.create(model="text-embedding-3-small", input="ok")
    assert e.value.code == "model_not_found" and EMB in e.value.message
    with pytest.raises(openai.BadRequestError) as e:  # and the other way round
        c.chat.completions.create(model=EMB, messages=[{"role": "user", "content": "hi"}])
    assert e.value.param == "model" and "/v1/embeddings" in e.value.message
    with pytest.raises(openai.AuthenticationError):
        client(server, "sk-wrong").embeddings.create(model=EMB, input="ok")


def test_a_server_started_without_embeddings_lists_and_serves_none(tiny_sessions):
    from edgeweave.serve.config import ServeConfig
    from edgeweave.serve.server import BackgroundServer

    with BackgroundServer(tiny_sessions, ServeConfig(embeddings=False)) as url:
        c = client(url, "none")
        assert [m.id for m in c.models.list()] == ["tiny-llama"]
        with pytest.raises(openai.NotFoundError):
            c.embeddings.create(model=EMB, input="ok")
        with pytest.raises(openai.BadRequestError) as e:
            c.embeddings.create(model="tiny-llama", input="ok")
        assert "serves no embedding model" in e.value.message
