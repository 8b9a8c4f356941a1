"""Buyer integrations: request templates, response rules, signatures, circuit breaker."""
