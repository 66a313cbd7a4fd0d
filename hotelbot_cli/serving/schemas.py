"""The HTTP API's pydantic models: request bodies (with their text validation) and the documented
response shapes (the OpenAPI schema at /docs), plus the error responses each POST route declares."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, model_validator
from pydantic_core import PydanticCustomError

from ..data import OUT_OF_SCOPE, clean_text


# The characters clean_text drops or turns into spaces: whitespace and control/format characters (Unicode
# categories Cc, Cf), as code point ranges of Python 3.11's Unicode 14 (a test checks them against unicodedata).
BLANK_RANGES = (
    (0x0, 0x20),
    (0x7F, 0xA0),
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x1680, 0x1680),
    (0x180E, 0x180E),
    (0x2000, 0x200F),
    (0x2028, 0x202F),
    (0x205F, 0x2064),
    (0x2066, 0x206F),
    (0x3000, 0x3000),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x13438),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
)


def _class_char(code: int) -> str:
    # \uXXXX in the BMP (read alike by Python's re and ECMA-262); the character itself above it (ECMA-262
    # with the "u" flag, which JSON Schema patterns use, reads it as one code point; so does Python)
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)


# "Not blank", as the OpenAPI schema states it: at least one character outside BLANK_RANGES (a pattern is
# matched anywhere in the string). The server's own check (_non_blank) accepts exactly these strings.
NON_BLANK_PATTERN = (
    "[^" + "".join(_class_char(a) if a == b else f"{_class_char(a)}-{_class_char(b)}" for a, b in BLANK_RANGES) + "]"
)


def _non_blank(value: str) -> str:
    if not clean_text(value):
        raise PydanticCustomError("blank_text", "text is empty or only whitespace/control characters")
    return value


# A JSON string (never a number or null) that is not blank once cleaned like the training data. Its length
# limit is the server's max_text_length (serving.docs adds it to the schema; longer texts get 413).
Text = Annotated[
    StrictStr, AfterValidator(_non_blank), Field(json_schema_extra={"minLength": 1, "pattern": NON_BLANK_PATTERN})
]


# The optional key of a guest's conversation, the same in every request body that takes one.
ConversationId = Annotated[
    str | None,
    Field(
        max_length=200,
        description="Keeps one guest's conversation on one model version while a canary runs (also the "
        "X-Conversation-Id header; random when absent).",
    ),
]


# The id of one answered message: what POST /feedback names (only with `serve --capture`).
RequestId = Annotated[
    str | None,
    Field(description="With `hotelbot serve --capture DIR`: this answer's id, for POST /feedback; absent otherwise."),
]
REQUEST_ID_PATTERN = "^[0-9a-f]{32}$"


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "¿a qué hora es el desayuno?"}]})

    text: Text = Field(description="The guest's message (non-empty; at most max_text_length characters).")
    conversation_id: ConversationId = None


class BatchClassifyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["hola", "¿cuál es la clave del wifi?"]}]})

    texts: list[Text] = Field(min_length=1, description="1 to max_batch_size non-empty messages.")
    conversation_id: ConversationId = None


class ReplyRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "¿a qué hora cierra la piscina?"}]})

    text: Text = Field(description="The guest's message (non-empty; at most max_text_length characters).")
    conversation_id: ConversationId = None


class SearchRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"query": "¿aceptan perros?", "top_k": 3}]})

    query: Text = Field(description="The guest's question (non-empty; at most max_text_length characters).")
    top_k: int = Field(5, ge=1, le=50, description="How many ranked chunks to return.")
    conversation_id: ConversationId = None


class SearchHitModel(BaseModel):
    rank: int
    score: float = Field(description="Cosine similarity of the query and the chunk.")
    id: str
    doc: str = Field(description="Source file, relative to the documents folder.")
    heading: str
    headings: list[str]
    start: int = Field(description="Character offset of the chunk in the original file.")
    end: int
    text: str


class SearchResults(BaseModel):
    model_version: str
    query: str
    results: list[SearchHitModel]


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"texts": ["Soy Ana, de la 305: llegamos el 15/08"]}]})

    texts: list[Text] = Field(min_length=1, description="1 to max_batch_size non-empty messages.")
    conversation_id: ConversationId = None


class Entity(BaseModel):
    type: str
    text: str = Field(description="text[start:end] of the message as sent")
    start: int
    end: int
    confidence: float = Field(description="Mean probability of the entity's tokens' tags.")


class Sentiment(BaseModel):
    label: str = Field(description="positive, neutral or negative")
    confidence: float


class RankedIntent(BaseModel):
    intent: str
    confidence: float


class Classification(BaseModel):
    intent: str = Field(
        description=f"The predicted intent, or {OUT_OF_SCOPE!r} when the version's out-of-scope detector says so."
    )
    confidence: float = Field(description="The model's confidence in its top-ranked intent.")
    top_k: list[RankedIntent] = Field(description="The model's ranking (unchanged by the fallback).")
    model_version: str
    fallback: bool = Field(
        description="True when the out-of-scope detector (the softmax threshold, or the kNN "
        "detector) replaced the intent."
    )
    out_of_scope_similarity: float | None = Field(
        None,
        description="kNN detector only: the similarity with the "
        "k-th nearest in-scope training message (below its threshold: "
        "out of scope).",
    )
    request_id: RequestId = None


class BatchClassification(BaseModel):
    model_version: str
    predictions: list[Classification]


class Analysis(BaseModel):
    text: str
    intent: str | None = Field(description="As /classify; null when the version has no intent classifier.")
    confidence: float | None
    top_k: list[RankedIntent]
    fallback: bool | None
    out_of_scope_similarity: float | None = Field(None, description="As /classify (kNN detector only).")
    entities: list[Entity] = Field(description="[] when the version has no entity model.")
    sentiment: Sentiment | None = Field(description="null when the version has no sentiment model.")
    request_id: RequestId = None


class BatchAnalysis(BaseModel):
    model_version: str
    predictions: list[Analysis]


class ReplySource(BaseModel):
    doc: str = Field(description="The document the cited passage comes from.")
    heading: str
    chunk_id: str
    score: float = Field(description="The passage's retrieval score (cosine).")
    sentences: list[str] = Field(description="The passage's sentences the reply quotes ([] for a generated reply).")


class UnsupportedFact(BaseModel):
    type: str = Field(description="number, time, email, phone, url or name")
    text: str


class RejectedReply(BaseModel):
    reply: str
    kind: str
    unsupported: list[UnsupportedFact] = Field(description="Its facts that neither its sources nor the message hold.")


class FactCheck(BaseModel):
    passed: bool = Field(description="Always true for a sent reply: one that fails is replaced, see rejected.")
    unsupported: list[UnsupportedFact]


class ReplyAnswer(BaseModel):
    reply: str = Field(description="What to send to the guest.")
    kind: str = Field(
        description="grounded (document sentences), generated, action (intent template + how-to "
        "sentence), social, fallback (out of scope) or no_answer"
    )
    intent: str | None = Field(description="The classifier's intent; null when the version has none.")
    confidence: float | None
    entities: list[Entity]
    sources: list[ReplySource] = Field(
        description="The passages the reply cites; every fact in it is in them or in the message."
    )
    check: FactCheck
    rejected: list[RejectedReply] = Field(
        [], description="Candidate replies not sent because they stated an unsupported fact."
    )
    model_version: str
    request_id: RequestId = None


class Readiness(BaseModel):
    ready: bool
    model_version: str | None = None
    out_of_scope_threshold: float | None = None
    out_of_scope_detector: dict[str, Any] | None = Field(
        None, description="The detector the version chose on validation: {method: softmax|knn, threshold, k, ...}."
    )
    canary: dict[str, Any] | None = Field(
        None, description="A running canary: {version, weight (percent of conversations)}; null when none is served."
    )
    last_load_error: str | None = Field(None, description="Why the newest deploy is not served (old model kept).")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"request_id": "3f2b6c1e9a8d4f7b8c2a1d0e9f8a7b6c", "intent": "late_checkout"},
                {"request_id": "3f2b6c1e9a8d4f7b8c2a1d0e9f8a7b6c", "wrong_answer": True},
            ],
            # what _says_something checks, stated in the schema: an intent, or wrong_answer true
            "anyOf": [
                {"required": ["intent"], "properties": {"intent": {"type": "string"}}},
                {"required": ["wrong_answer"], "properties": {"wrong_answer": {"const": True}}},
            ],
        }
    )

    request_id: StrictStr = Field(
        pattern=REQUEST_ID_PATTERN, description="The request_id of an answer this server gave (32 hex digits)."
    )
    intent: StrictStr | None = Field(
        None, pattern="^[a-z][a-z0-9_]{0,63}$", description="The intent the message really had, when known."
    )
    wrong_answer: bool = Field(False, description="The answer was wrong (the right intent unknown).")

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.intent is None and not self.wrong_answer:
            raise PydanticCustomError("no_feedback", "give the right intent, or wrong_answer: true")
        return self


class FeedbackAnswer(BaseModel):
    captured: bool
    request_id: str
    reason: str = Field(description="Always feedback.")
    model_version: str = Field(description="The version that answered the flagged request.")


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (413, "A text or the batch is over the server's limit"),
        (422, "Missing, empty or non-string text; a value outside its range; body is not JSON (or not UTF-8)"),
        (503, "No model is loaded: train and deploy one"),
    )
}

FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No request with this id was answered here in the feedback window"},
    422: {"model": ErrorBody, "description": "A malformed request id or intent, or neither intent nor wrong_answer"},
    503: {"model": ErrorBody, "description": "Capture is off: start the server with --capture DIR"},
}
