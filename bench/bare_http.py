"""The web stack's own ceiling on this machine: uvicorn and FastAPI (as every service
runs them) answering ``202`` to a lead-sized JSON post parsed into a pydantic model,
with no database, no Kafka and no middleware. ``bench.machine.http_limit`` runs it as a
process of its own and drives it with the load generator; ingest's accepted rate is
reported as a share of it.

    python -m bench.bare_http PORT
"""

from __future__ import annotations

import sys
import uuid
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict

app = FastAPI()


class Lead(BaseModel):
    model_config = ConfigDict(extra="allow")
    email: str


@app.post("/v1/leads", status_code=202)
async def post_lead(lead: Lead) -> dict[str, Any]:
    return {"lead_id": str(uuid.uuid4()), "status": "accepted"}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
