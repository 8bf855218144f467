"""The FastAPI peer of `appliance bench`: the same River model behind FastAPI, as a team would write it.

`POST /predict {"x": {feature: value}}` -> `{"score": P(positive)}`. The body is read as bytes and
parsed with orjson and the reply is orjson bytes in a plain `Response` (no pydantic model on either
side: the cheapest path FastAPI offers). It computes no features; the appliance's `predict` does.

No `from __future__ import annotations` here: FastAPI reads the handler's annotations at runtime.
"""

import pickle
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response


def app_for(model_path: str) -> FastAPI:
    """The app, serving the pickled River classifier at `model_path`."""
    model = pickle.loads(Path(model_path).read_bytes())
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        x = orjson.loads(await request.body())["x"]
        proba = model.predict_proba_one(x)
        return Response(orjson.dumps({"score": proba.get(True, proba.get(1, 0.0))}), media_type="application/json")

    return app
