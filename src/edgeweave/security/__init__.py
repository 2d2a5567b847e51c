"""Fleet security: a certificate authority per fleet and mutual TLS for stage traffic."""
