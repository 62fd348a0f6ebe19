"""The server against its own OpenAPI document, with schemathesis: generated requests
(valid ones, and invalid ones where an operation takes input) to every operation, with a
valid key, on each database backend. The bar: no 5xx, every status code and content type
documented, every JSON body as its schema says.

Generated ids name nothing, so about half the requests with ids in the path get real ones
instead: a file, a cancelled job (its live stream ends at once) and a webhook of the key.
Bounded: EXAMPLES requests per operation (SAGETRAIN_SCHEMA_EXAMPLES to change it), no
shrinking, so a run takes under a minute per backend on two cores.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from typing import Any

import schemathesis
from api_helpers import Service

EXAMPLES = int(os.environ.get("SAGETRAIN_SCHEMA_EXAMPLES", "60"))


def _checks() -> list[Any]:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    return [not_a_server_error, status_code_conformance, content_type_conformance,
            response_schema_conformance]


def test_the_server_keeps_to_its_openapi_document(service: Service) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    job = service.create_job()
    assert service.client.post(f"/v1/fine_tuning/jobs/{job['id']}/cancel",
                               headers=service.auth()).status_code == 200
    hook = service.client.post("/v1/webhooks", headers=service.auth(),
                               json={"url": "https://example.com/hook"}).json()
    real = {"job_id": job["id"], "file_id": service.upload()["id"], "webhook_id": hook["id"],
            "model": "tiny-bert"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", service.client.app)
    checks = _checks()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        cases = operation.as_strategy(GenerationMode.POSITIVE)
        if len(operation.body) or any(True for _ in operation.iter_parameters()):
            cases = st.one_of(cases, operation.as_strategy(GenerationMode.NEGATIVE))

        @given(case=cases, use_real_ids=st.booleans())
        @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def check(case: Any, use_real_ids: bool) -> None:
            if use_real_ids and case.path_parameters:
                case.path_parameters = {name: real.get(name, value)
                                        for name, value in case.path_parameters.items()}
            # the key is valid, except where a negative case leaves it out on purpose
            headers = {k: v for k, v in (case.headers or {}).items()
                       if k.lower() != "authorization"}
            response = case.call(headers={**headers, **service.auth()})
            statuses[response.status_code] += 1
            case.validate_response(response, checks=checks)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's, not the first's
            failures.append(f"{operation.method.upper()} {operation.path}: "
                            f"{type(exc).__name__}: {str(exc)[:3000]}")
    print(f"schemathesis: {sum(statuses.values())} requests in "
          f"{time.monotonic() - started:.0f} s, by status {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert not [s for s in statuses if s >= 500]
    assert statuses[200] > 0 and statuses[400] > 0


def test_every_operation_documents_its_error_answers(service: Service) -> None:
    """Issue 17 item 8: the document listed 200 and 422 only, while the server never
    answers 422 and does answer 400, 401, 404, 409 and 413."""
    spec = service.client.get("/openapi.json").json()
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "422" not in responses, (method, path)
            assert "400" in responses, (method, path)
            if path.startswith("/v1/"):
                assert {"401", "429"} <= set(responses), (method, path)
            if "{" in path:
                assert "404" in responses, (method, path)
            for code, answer in responses.items():
                if code.startswith(("4", "5")) and path != "/readyz":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == error_ref, (method, path, code)
    files = spec["paths"]["/v1/files"]["post"]["responses"]
    assert {"409", "413"} <= set(files)
    assert "409" in spec["paths"]["/v1/fine_tuning/jobs/{job_id}/cancel"]["post"]["responses"]
    detail = spec["components"]["schemas"]["ErrorDetail"]
    assert set(detail["required"]) == {"message", "type", "param", "code"}
