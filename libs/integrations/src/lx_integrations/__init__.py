"""Buyer integrations: request templates, response rules, signatures, circuit breaker.

``templates.render`` builds a buyer's request, ``responses.read_response`` /
``responses.read_bid`` read its answer, ``signing`` signs posts, ``breaker`` pauses an
erroring buyer. All pure (no I/O); the delivery and auction services do the sending.
"""
