"""``waitroom``: the operator's command-line console over the ticketing service's admin API."""
