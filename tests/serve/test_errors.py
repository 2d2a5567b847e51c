"""Exceptions -> OpenAI error shapes and statuses."""

from __future__ import annotations

from edgeweave.errors import GenerationError, PlanningError, RuntimeStageError
from edgeweave.serve.errors import from_exception


def test_client_errors_are_400_and_fleet_failures_503():
    e = from_exception(GenerationError("the prompt is empty: give some text"))
    assert (e.status, e.type) == (400, "invalid_request_error")
    assert e.body() == {"error": {"message": "the prompt is empty: give some text",
                                  "type": "invalid_request_error", "param": None,
                                  "code": None}}
    assert from_exception(RuntimeStageError("node b: gone")).status == 503
    p = from_exception(PlanningError("every device of the plan failed"))
    assert (p.status, p.code) == (503, "no_feasible_plan")
    boom = from_exception(ValueError("x"))
    assert (boom.status, boom.type) == (500, "server_error") and "ValueError" in boom.message
