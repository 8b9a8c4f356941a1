from lx_delivery.domain import backoff_s, read_answer
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


def test_a_custom_rule_reads_its_own_field() -> None:
    rule = AcceptanceRule(field="result", accepted=("success",), reason_field="message")
    assert read_answer(201, b'{"result":"success"}', rule).result is DeliveryResult.ACCEPTED


def test_backoff_grows_and_stays_within_its_bound() -> None:
    for n in range(1, 6):
        assert 0 <= backoff_s(n, 0.5) <= 0.5 * 2 ** (n - 1)
