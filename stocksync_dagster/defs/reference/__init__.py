"""Reference data: the exchange calendar and the security master."""
