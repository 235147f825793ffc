"""The OpenAI wire shapes we speak, in one place (`/v1/models`, `/v1/embeddings`).

Field names and literals follow the official `openai` Python client's types
(`openai.types.CreateEmbeddingResponse`, `openai.types.Model`), so its parser accepts every answer.
The request model validates the body; the responses are declared for the OpenAPI document while
the handlers serialise them with orjson directly (384 floats a row add up).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: OpenAI caps an embeddings request at 2048 inputs; we keep the same bound.
MAX_EMBEDDING_INPUTS = 2048


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str | list[str] | list[int] | list[list[int]] = Field(
        description="Text to embed: a string or a list of strings (token arrays are refused)."
    )
    model: str = Field(min_length=1, description="An embedding model served here (see GET /v1/models).")
    encoding_format: Literal["float", "base64"] = Field(
        default="float", description="`base64`: each vector as little-endian float32 bytes, base64-encoded."
    )
    dimensions: int | None = Field(default=None, ge=1, description="Must equal the model's own dimension.")
    user: str | None = Field(default=None, description="Accepted and ignored.")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str
    index: int


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the model version was added to the repository.")
    owned_by: str
    context_length: int | None = Field(
        default=None,
        description="Most tokens of prompt plus completion (generative models; null otherwise).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIError(BaseModel):
    error: OpenAIErrorDetail
