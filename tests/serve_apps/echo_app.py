"""rayform's test application for Ray Serve: an OpenAI-style endpoint with a deterministic echo "model".

Deployed exactly as a KubeRay RayService deploys an app: the serveConfigV2 (or the JSON PUT to
``/api/serve/applications/``) names ``import_path: echo_app:build``, a ``runtime_env.working_dir``
holding this directory (on a local Ray 2.60: ``local:///abs/path/to/tests/serve_apps``), and ``args``.

HTTP API (relative to the app's route_prefix):
  GET  /v1/models            -> 200 {"object":"list","data":[{"id":<model>,"object":"model",...}]}
                                (or ``models_status`` with an OpenAI-style error body)
  POST /v1/chat/completions  -> 200 chat.completion whose message content is "echo: <last user message>"

Application args (serveConfigV2 ``args``); unknown keys are rejected so a typo fails the deploy:
  model          str    model id served and reported (default "echo")
  init_delay_s   float  the replica constructor sleeps this long before it can serve (default 0):
                        reproduces "route listed while the replica is still initialising"
  fail_on_init   bool|str  raise in the constructor -> the app goes DEPLOY_FAILED; a string is used
                        as the exception message (default false)
  fail_first     int    the first N constructors on this pod raise, later ones start: a transient
                        failure (a weights download that breaks once) that Serve's retries recover
                        from (default 0; counted in a file under the pod's TMPDIR, per model)
  models_status  int    HTTP status of GET /v1/models (default 200); e.g. 500 makes a probe fail
  chat_status    int    HTTP status of POST /v1/chat/completions (default 200)
"""

import hashlib
import os
import tempfile
import time
from typing import Any, Dict, Optional, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from ray import serve

DEFAULT_FAIL_MESSAGE = "echo_app: fail_on_init was set; the replica constructor raised on purpose"


class EchoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "echo"
    init_delay_s: float = 0.0
    fail_on_init: Union[bool, str] = False
    fail_first: int = 0
    models_status: int = 200
    chat_status: int = 200


api = FastAPI(title="rayform echo model")


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"message": message, "type": kind, "code": status}},
    )


def _fail_while_counting(model: str, times: int) -> None:
    marker = os.path.join(tempfile.gettempdir(), f"echo_app_failed_starts_{model}")
    failed = int(open(marker).read()) if os.path.exists(marker) else 0
    if failed < times:
        with open(marker, "w") as f:
            f.write(str(failed + 1))
        raise RuntimeError(f"echo_app: start {failed + 1} of the first {times} fails on purpose (fail_first)")


@serve.deployment(name="EchoModel", num_replicas=1, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class EchoModel:
    def __init__(self, args: Dict[str, Any]):
        self.args = EchoArgs(**args)
        if self.args.init_delay_s > 0:
            time.sleep(self.args.init_delay_s)
        if self.args.fail_first > 0:
            _fail_while_counting(self.args.model, self.args.fail_first)
        if self.args.fail_on_init:
            message = self.args.fail_on_init
            raise RuntimeError(message if isinstance(message, str) else DEFAULT_FAIL_MESSAGE)
        self.created = int(time.time())

    @api.get("/v1/models")
    def models(self):
        if self.args.models_status != 200:
            return _error(
                self.args.models_status,
                f"echo_app: /v1/models set to answer {self.args.models_status} (models_status)",
                "server_error",
            )
        return {
            "object": "list",
            "data": [
                {
                    "id": self.args.model,
                    "object": "model",
                    "created": self.created,
                    "owned_by": "rayform-echo",
                }
            ],
        }

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request):
        if self.args.chat_status != 200:
            return _error(
                self.args.chat_status,
                f"echo_app: /v1/chat/completions set to answer {self.args.chat_status} (chat_status)",
                "server_error",
            )
        try:
            body = await request.json()
        except Exception:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        model = body.get("model", self.args.model)
        if model != self.args.model:
            return _error(404, f"The model `{model}` does not exist.", "NotFoundError")
        if body.get("stream"):
            return _error(400, "echo_app does not stream; send stream=false")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "messages must be a non-empty list")
        last_user: Optional[str] = None
        for m in messages:
            if isinstance(m, dict) and m.get("role") == "user":
                content = m.get("content")
                if isinstance(content, list):  # OpenAI content parts
                    content = "".join(
                        p.get("text", "") for p in content if isinstance(p, dict)
                    )
                last_user = content if isinstance(content, str) else str(content)
        if last_user is None:
            return _error(400, "no message with role 'user'")

        # "Tokens" are whitespace-separated words; max_tokens truncates like a real model would.
        prompt_tokens = sum(
            len(str(m.get("content", "")).split()) for m in messages if isinstance(m, dict)
        )
        words = ("echo: " + last_user).split(" ")
        finish_reason = "stop"
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and 0 < max_tokens < len(words):
            words = words[:max_tokens]
            finish_reason = "length"
        content = " ".join(words)
        digest = hashlib.sha256(repr((model, messages)).encode()).hexdigest()[:24]
        return {
            "id": f"chatcmpl-echo-{digest}",
            "object": "chat.completion",
            "created": self.created,
            "model": self.args.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(words),
                "total_tokens": prompt_tokens + len(words),
            },
        }


def build(args: Dict[str, Any]) -> serve.Application:
    """Application builder named by ``import_path: echo_app:build``; ``args`` come from the config."""
    parsed = EchoArgs(**(args or {}))  # validate here too: bad args fail the deploy with a clear message
    return EchoModel.bind(parsed.model_dump())
