import pytest
from lx_delivery.domain import ReasonClass, Verdict, backoff_s, read_answer, reason_class
from lx_schemas.events import AcceptanceRule, DeliveryResult

RULE = AcceptanceRule()


def test_only_a_2xx_that_says_accepted_is_a_sale() -> None:
    assert read_answer(200, b'{"status":"Accepted"}', RULE).result is DeliveryResult.ACCEPTED
    v = read_answer(200, b'{"status":"rejected","reason":"duplicate"}', RULE)
    assert (v.result, v.reason, v.retryable) == (DeliveryResult.REJECTED, "duplicate", False)
    assert read_answer(200, b"OK", RULE).result is DeliveryResult.REJECTED


def test_server_errors_are_retryable_and_client_errors_are_rejections() -> None:
    v = read_answer(503, b"", RULE)
    assert (v.result, v.retryable) == (DeliveryResult.ERROR, True)
    v = read_answer(400, b'{"reason":"bad zip"}', RULE)
    assert (v.result, v.reason) == (DeliveryResult.REJECTED, "bad zip")


def test_a_redirect_is_a_final_error_never_the_buyers_word() -> None:
    for status in (301, 302, 303, 307, 308):
        v = read_answer(status, b'{"status":"accepted","reason":"moved"}', RULE)
        assert (v.result, v.reason, v.retryable) == (
            DeliveryResult.ERROR,
            f"redirect_not_followed: http_{status}",
            False,
        )


def test_a_custom_rule_reads_its_own_field() -> None:
    rule = AcceptanceRule(field="result", accepted=("success",), reason_field="message")
    assert read_answer(201, b'{"result":"success"}', rule).result is DeliveryResult.ACCEPTED


def test_backoff_grows_and_stays_within_its_bound() -> None:
    for n in range(1, 6):
        assert 0 <= backoff_s(n, 0.5) <= 0.5 * 2 ** (n - 1)


# What each way a try can end looks like (as the worker and read_answer build it), and the
# bounded class it is counted under in lx_delivery_outcomes_total.
R = DeliveryResult
TRIES: list[tuple[str, Verdict, int | None, ReasonClass]] = [
    ("accepted", read_answer(200, b'{"status":"accepted"}', RULE), 200, ReasonClass.ACCEPTED),
    (
        "declined in a 2xx",
        read_answer(200, b'{"status":"rejected","reason":"dupe of 7f3a"}', RULE),
        200,
        ReasonClass.REJECTED,
    ),
    ("2xx without the field", read_answer(200, b"OK", RULE), 200, ReasonClass.REJECTED),
    ("redirect", read_answer(302, b"", RULE), 302, ReasonClass.HTTP_3XX),
    (
        "client error",
        read_answer(422, b'{"reason":"bad zip 94105"}', RULE),
        422,
        ReasonClass.HTTP_4XX,
    ),
    ("server error", read_answer(503, b"", RULE), 503, ReasonClass.HTTP_5XX),
    ("refused", Verdict(R.ERROR, "connect_failed: ConnectError", True), None, ReasonClass.CONNECT),
    (
        "endpoint on a private address",
        Verdict(R.ERROR, "egress_refused: cloud_metadata 169.254.169.254", False),
        None,
        ReasonClass.EGRESS_REFUSED,
    ),
    (
        "connect timeout",
        Verdict(R.ERROR, "connect_failed: ConnectTimeout", True),
        None,
        ReasonClass.CONNECT,
    ),
    ("read timeout", Verdict(R.OUTCOME_UNKNOWN, "ReadTimeout", True), None, ReasonClass.TIMEOUT),
    ("write timeout", Verdict(R.OUTCOME_UNKNOWN, "WriteTimeout", True), None, ReasonClass.TIMEOUT),
    (
        "trickled past the deadline",
        Verdict(R.OUTCOME_UNKNOWN, "deadline_exceeded", True),
        200,
        ReasonClass.TIMEOUT,
    ),
    (
        "connection dropped",
        Verdict(R.OUTCOME_UNKNOWN, "RemoteProtocolError", True),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "crash after send",
        Verdict(R.OUTCOME_UNKNOWN, "interrupted_after_send", True),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "unknown, out of tries",
        Verdict(R.ERROR, "outcome_unknown_unresolved: ReadError", False),
        None,
        ReasonClass.OUTCOME_UNKNOWN,
    ),
    (
        "huge answer",
        Verdict(R.ERROR, "response_too_large", False),
        200,
        ReasonClass.RESPONSE_TOO_LARGE,
    ),
    ("buyer paused", Verdict(R.ERROR, "buyer_paused", False), None, ReasonClass.NOT_SENT),
    ("buyer unknown", Verdict(R.ERROR, "buyer_unknown", False), None, ReasonClass.NOT_SENT),
    ("pii shredded", Verdict(R.ERROR, "pii_shredded", False), None, ReasonClass.NOT_SENT),
    (
        "other transport",
        Verdict(R.ERROR, "transport: UnsupportedProtocol", True),
        None,
        ReasonClass.OTHER,
    ),
]


@pytest.mark.parametrize(
    ("verdict", "status", "expected"), [t[1:] for t in TRIES], ids=[t[0] for t in TRIES]
)
def test_each_way_a_try_ends_is_counted_under_its_reason_class(
    verdict: Verdict, status: int | None, expected: ReasonClass
) -> None:
    assert reason_class(verdict.result, verdict.reason, status) is expected


def test_a_buyers_free_text_reason_never_becomes_a_label_value() -> None:
    texts = ["", "x" * 500, "duplicate lead", "http_503", "Timeout", "ünïcode ✓", "connect"]
    for result in DeliveryResult:
        for text in texts:
            for status in (None, 200, 204, 301, 404, 500, 599):
                assert reason_class(result, text, status) in set(ReasonClass)
